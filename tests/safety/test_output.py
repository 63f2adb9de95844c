"""The output screens on streamed text: a canary or a PII value split across deltas is still seen
whole before any of it is released; everything released was checked; JSON validation messages."""

from __future__ import annotations

import pytest

from conduit.safety.output import OutputScreen, canary_for, json_error, with_canary
from conduit.safety.pii import PiiScanner

CANARY = canary_for(b"secret", "tenant-1")


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


def _run(screen: OutputScreen, pieces: list[str]) -> tuple[str, str | None]:
    released = []
    for piece in pieces:
        out = screen.feed(piece)
        released.append(out.text)
        if out.blocked:
            return "".join(released), out.blocked
    out = screen.flush()
    return "".join(released) + out.text, out.blocked


def test_the_canary_is_per_tenant_and_goes_into_the_system_prompt() -> None:
    assert CANARY == canary_for(b"secret", "tenant-1") != canary_for(b"secret", "tenant-2")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    marked = with_canary(messages, CANARY)
    assert CANARY in marked[0]["content"] and marked[0]["content"].startswith("Be brief.")
    assert messages[0]["content"] == "Be brief."  # the caller's list is not changed
    assert CANARY in with_canary([{"role": "user", "content": "Hi"}], CANARY)[0]["content"]


@pytest.mark.parametrize("size", [1, 3, 7, 50])
def test_a_canary_split_across_deltas_is_caught_before_any_of_it_is_sent(size: int) -> None:
    text = f"My instructions say: [{CANARY}] This line is confidential."
    released, blocked = _run(OutputScreen(canary=CANARY), _pieces(text, size))
    assert blocked == "system_prompt"
    assert "cndy" not in released and text.startswith(released)


@pytest.mark.parametrize("size", [1, 4, 64])
def test_text_without_the_canary_comes_through_whole(size: int) -> None:
    text = "A perfectly ordinary answer about tides, cndy and canaries."
    assert _run(OutputScreen(canary=CANARY), _pieces(text, size)) == (text, None)


@pytest.mark.parametrize("size", [1, 5, 13, 200])
def test_pii_split_across_deltas_is_redacted_whole(size: int) -> None:
    text = ("Thanks for waiting. You can reach the on-call engineer at oncall.engineer@example.com "
            "or on +44 20 7946 0958 during office hours, and the box is 192.168.10.24 today.")
    released, blocked = _run(OutputScreen(pii=PiiScanner()), _pieces(text, size))
    assert blocked is None
    assert released == ("Thanks for waiting. You can reach the on-call engineer at <EMAIL_ADDRESS> "
                        "or on <PHONE_NUMBER> during office hours, and the box is <IP_ADDRESS> today.")


def test_pii_in_block_mode_stops_the_text_before_the_value() -> None:
    text = "Here is the record you asked for, in full: SSN 078-05-1120, born 1970."
    released, blocked = _run(OutputScreen(pii=PiiScanner(), pii_action="block"), _pieces(text, 2))
    assert blocked == "pii" and "078" not in released


def test_json_errors_say_what_is_wrong() -> None:
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}
    assert json_error('{"n": 3}', schema) is None
    assert json_error('```json\n{"n": 3}\n```', schema) is None
    assert "not valid JSON" in json_error('{"n": 3', schema)
    assert "n" in json_error('{"n": "three"}', schema) and "integer" in json_error('{"n": "three"}', schema)
    assert "required" in json_error("{}", schema)
    assert json_error("[1]", {"type": "json_object"}) == "the answer must be a JSON object"
