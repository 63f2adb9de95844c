"""PII scanner, vault and stream restorer: behaviour on realistic text."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest

from conduit.safety.pii import (
    ENTITIES,
    PiiScanner,
    StreamRestorer,
    Vault,
    default_scanner,
)

# Built at run time so that no realistic-looking credential sits in the repository.
OPENAI_KEY = "sk-proj-" + "Xq3vT9" * 8
GITHUB_TOKEN = "ghp_" + "a1B2c3" * 6
SLACK_TOKEN = "xoxb-" + "1234567890" + "-" + "AbCdEf" * 4
GOOGLE_KEY = "AIza" + "Sy" + "B1c2D3e4F5" * 3 + "g6H"
STRIPE_KEY = "sk_" + "live_" + "4eC39HqLyjWDarjtT1zdp7dc"
AWS_KEY_ID = "AKIA" + "Q3EGRTYU" + "XZ4B7W2M"
JWT = (
    "eyJhbGciOiJIUzI1NiJ9."
    + "eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    + "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7x9\nq2Lw==\n-----END RSA PRIVATE KEY-----"


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return default_scanner()


def found(scanner: PiiScanner, text: str) -> list[tuple[str, str]]:
    return [(s.entity, text[s.start : s.end]) for s in scanner.find(text)]


@pytest.mark.parametrize(
    ("text", "entity", "value"),
    [
        (
            "Please send the invoice to maria.lopez@acme-corp.com today.",
            "EMAIL_ADDRESS",
            "maria.lopez@acme-corp.com",
        ),
        ("You can call me at (212) 555-0187 after six.", "PHONE_NUMBER", "(212) 555-0187"),
        ("My UK mobile is +44 7911 123456.", "PHONE_NUMBER", "+44 7911 123456"),
        ("Ruf mich an: 030 90182000", "PHONE_NUMBER", "030 90182000"),
        ("Appelez-moi au 01 42 68 53 00 demain.", "PHONE_NUMBER", "01 42 68 53 00"),
        ("My Visa 4111 1111 1111 1111 was charged twice.", "CREDIT_CARD", "4111 1111 1111 1111"),
        ("Card 5555-5555-5555-4444 expires in May.", "CREDIT_CARD", "5555-5555-5555-4444"),
        ("Mastercard 2223003122003222 was declined.", "CREDIT_CARD", "2223003122003222"),
        (
            "Wire it to DE89 3704 0044 0532 0130 00 please.",
            "IBAN_CODE",
            "DE89 3704 0044 0532 0130 00",
        ),
        ("My IBAN is GB82WEST12345698765432.", "IBAN_CODE", "GB82WEST12345698765432"),
        ("His social security number is 536-90-4399.", "US_SSN", "536-90-4399"),
        ("The login came from 203.0.113.42 at night.", "IP_ADDRESS", "203.0.113.42"),
        ("Block 2001:db8::8a2e:370:7334 on the firewall.", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
        (f"my key is {OPENAI_KEY} why 401?", "SECRET", OPENAI_KEY),
        (f"export GITHUB_TOKEN={GITHUB_TOKEN}", "SECRET", GITHUB_TOKEN),
        (f"slack bot uses {SLACK_TOKEN}", "SECRET", SLACK_TOKEN),
        (f"maps key {GOOGLE_KEY} in the html", "SECRET", GOOGLE_KEY),
        (f"stripe.api_key = '{STRIPE_KEY}'", "SECRET", STRIPE_KEY),
        (f"aws_access_key_id = {AWS_KEY_ID}", "SECRET", AWS_KEY_ID),
        (f"Authorization: Bearer {JWT}", "SECRET", JWT),
        (f"here is the key:\n{PEM}\nthanks", "SECRET", PEM),
        ('db = connect(user="app", password="Tr0ub4dor&3")', "SECRET", "Tr0ub4dor&3"),
        ("my password is hunter2hunter2 and it stopped working", "SECRET", "hunter2hunter2"),
        ('{"client_secret": "9f8e7d6c5b4a3210"}', "SECRET", "9f8e7d6c5b4a3210"),
        # The edges of the cheap checks that skip a recognizer: case, the shortest shapes.
        ("Traffic from fe80::1ff:fe23:4567:890a was dropped.", "IP_ADDRESS", "fe80::1ff:fe23:4567:890a"),
        ("Amex 3782-822463-10005 on file.", "CREDIT_CARD", "3782-822463-10005"),
        ("PASSWORD=Zx9vQ2mP7kL4", "SECRET", "Zx9vQ2mP7kL4"),
    ],
)
def test_each_entity_is_found_in_a_sentence(scanner, text, entity, value):
    assert (entity, value) in found(scanner, text)


@pytest.mark.parametrize(
    "text",
    [
        "My card 4111 1111 1111 1112 was declined.",  # Luhn checksum fails
        "Wire it to DE89 3704 0044 0532 0130 01 please.",  # IBAN check digits fail
        "My IBAN is GB83WEST12345698765432.",
    ],
)
def test_invalid_checksums_are_not_flagged(scanner, text):
    assert found(scanner, text) == []


@pytest.mark.parametrize(
    "text",
    [
        "Release 2.14.3 fixes 12 bugs; 4,210 requests failed between 14:05 and 14:17 UTC.",
        "Order #88231 shipped on 2024-03-05 10:22:31.123456, total $1,299.99, 3 items.",
        "Population grew from 1,234,000 in 1990 to 2,345,500 in 2020.",
        "for i in range(100):\n    total += weights[i] * 0.75\nprint(f'{total:.3f}')",
        "Matrix shape (1024, 768), lr 3e-4, batch 256, seed 1234567.",
        "The commit fa27061721b3fde7840bc6d6ea286a123eb413e8 broke the build.",
        "Use uuid 3f2b8c1e-9d4a-4e6b-8f1a-2c3d4e5f6a7b as the idempotency key.",
        "password = get_password()  # api_key: str = settings.api_key; token = None",
        "password = os.environ['DB_PASSWORD'] and the password is required",
        'api_key = "${OPENAI_API_KEY}" or api_key = "<your-api-key>"',
        "AWS documents AKIAIOSFODNN7EXAMPLE as a sample access key id.",
        "Ship to ZIP 94103-1234; tracking number 483920175.",
        "Write to user@localhost or to the team channel.",
        "Serve on http://127.0.0.1:8000 with mask 255.255.255.0; every = sample[::2]",
        'token = "percent"; password=auth[1]; token = b64encode(userpass)',
        "recall@10 was 0.977 / 0.9945 / 0.999 at ef_search=64",
    ],
)
def test_ordinary_prose_and_code_are_not_flagged(scanner, text):
    assert found(scanner, text) == []


def test_spans_are_sorted_and_do_not_overlap(scanner):
    text = (
        "Reach dana@acme-corp.com or +1 415 555 0134; card 4539 1488 0343 6467; "
        f"server 10.0.0.7; ssn 536-90-4399; key {OPENAI_KEY}; iban DE89370400440532013000."
    )
    spans = scanner.find(text)
    assert {s.entity for s in spans} == set(ENTITIES)
    assert spans == sorted(spans, key=lambda s: s.start)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))


def test_context_words_raise_weak_matches_over_the_threshold(scanner):
    assert found(scanner, "Her SSN 536904399 is on file.") == [("US_SSN", "536904399")]
    assert found(scanner, "Tracking 536904399 is on file.") == []


def test_entity_subset_and_unknown_entity():
    only_email = PiiScanner(entities=["EMAIL_ADDRESS"])
    assert [s.entity for s in only_email.find("a.b@example.org, 203.0.113.42")] == ["EMAIL_ADDRESS"]
    with pytest.raises(ValueError, match="PERSON"):
        PiiScanner(entities=["PERSON"])


def test_min_score_drops_phone_numbers_without_context():
    text = "Ruf 030 90182000 an."
    assert PiiScanner(min_score=0.4).find(text)
    assert PiiScanner(min_score=0.5).find(text) == []


def test_redact_without_vault_uses_plain_placeholders(scanner):
    text = "Mail maria@acme-corp.com, card 4111 1111 1111 1111."
    redacted, spans = scanner.redact(text)
    assert redacted == "Mail <EMAIL_ADDRESS>, card <CREDIT_CARD>."
    assert [s.entity for s in spans] == ["EMAIL_ADDRESS", "CREDIT_CARD"]


def test_redact_and_restore_round_trip(scanner):
    text = f"I am maria@acme-corp.com, call +44 7911 123456, key {OPENAI_KEY}."
    vault = Vault()
    redacted, _ = scanner.redact(text, vault)
    assert redacted == "I am <EMAIL_ADDRESS_1>, call <PHONE_NUMBER_1>, key <SECRET_1>."
    assert len(vault) == 3
    assert vault.restore(redacted) == text
    assert "maria" not in repr(vault)


def test_same_value_gets_same_placeholder_across_messages(scanner):
    vault = Vault()
    first, _ = scanner.redact("From ann@acme-corp.com to bob@acme-corp.com", vault)
    second, _ = scanner.redact("Reply to bob@acme-corp.com, not ann@acme-corp.com", vault)
    assert first == "From <EMAIL_ADDRESS_1> to <EMAIL_ADDRESS_2>"
    assert second == "Reply to <EMAIL_ADDRESS_2>, not <EMAIL_ADDRESS_1>"
    assert len(vault) == 2


def test_restore_leaves_user_written_look_alikes_alone(scanner):
    vault = Vault()
    text = "Template var <EMAIL_ADDRESS_1> should become ann@acme-corp.com"
    redacted, _ = scanner.redact(text, vault)
    assert redacted == "Template var <EMAIL_ADDRESS_1> should become <EMAIL_ADDRESS_2>"
    answer = (
        "Done: <EMAIL_ADDRESS_1> -> <EMAIL_ADDRESS_2>; <EMAIL_ADDRESS_3> and <PERSON_1> unknown"
    )
    assert vault.restore(answer) == (
        "Done: <EMAIL_ADDRESS_1> -> ann@acme-corp.com; <EMAIL_ADDRESS_3> and <PERSON_1> unknown"
    )


def test_stream_restorer_handles_a_split_at_every_position():
    vault = Vault()
    email, phone = (
        vault.placeholder("EMAIL_ADDRESS", "a@b.org"),
        vault.placeholder("PHONE_NUMBER", "+44 7911 123456"),
    )
    stream = f"Write to {email}<{phone}> or a < b <EMAIL_ADDRESS_7> <"
    expected = "Write to a@b.org<+44 7911 123456> or a < b <EMAIL_ADDRESS_7> <"
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            restorer = StreamRestorer(vault)
            pieces = [stream[:i], stream[i:j], stream[j:]]
            out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
            assert out == expected, (i, j)


def test_stream_restorer_holds_back_only_a_possible_placeholder_prefix():
    vault = Vault()
    vault.placeholder("EMAIL_ADDRESS", "a@b.org")
    restorer = StreamRestorer(vault)
    assert restorer.feed("if x <") == "if x "
    assert restorer.feed(" 3: ok <EMAIL_AD") == "< 3: ok "
    assert restorer.feed("DRESS_1> done") == "a@b.org done"
    assert restorer.feed("<EMAIL_ADDRESS_2") == "<EMAIL_ADDRESS_2"  # never issued
    assert restorer.flush() == ""


def test_stream_restorer_without_placeholders_passes_text_through():
    restorer = StreamRestorer(Vault())
    assert restorer.feed("a <b> c <") == "a <b> c <"


def test_scanner_is_safe_to_share_between_threads(scanner):
    texts = [f"user{i}@acme-corp.com called +1 415 555 01{i:02} from 10.0.0.{i}" for i in range(40)]
    expected = [scanner.find(t) for t in texts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(scanner.find, texts)) == expected


def test_scanning_needs_no_network_and_writes_no_cache(tmp_path):
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise AssertionError("network access attempted")

        socket.socket.connect = refuse
        socket.create_connection = refuse
        from conduit.safety.pii import PiiScanner

        spans = PiiScanner().find("mail bob@mail.example.co.uk, call +44 20 7946 0018")
        print(",".join(s.entity for s in spans))
        """
    )
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "EMAIL_ADDRESS,PHONE_NUMBER"
    assert list(tmp_path.iterdir()) == []
