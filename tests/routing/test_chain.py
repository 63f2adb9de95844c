"""Gateway -> engine: two real Conduit processes, the engine one serving the bundled model."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ServerProcess
from tests.conftest import start_gateway


def test_gateway_in_front_of_engine_server(server: ServerProcess, tmp_path: Path) -> None:
    config = {"models": [{
        "name": "smol-remote",
        "deployments": [{"backend": "openai", "base_url": f"{server.url}/v1", "upstream_model": "smollm2",
                         "api_key_env": "ENGINE_KEY", "context_length": 8192}],
    }]}
    gateway = start_gateway(tmp_path, config, env={"ENGINE_KEY": server.admin_key or ""})
    try:
        client = gateway.client()
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        direct = server.client().chat.completions.create(model="smollm2", messages=messages, temperature=0,
                                                         max_tokens=20)
        chunks = list(client.chat.completions.create(model="smol-remote", messages=messages, temperature=0,
                                                     max_tokens=20, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == direct.choices[0].message.content
        assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3  # streamed, not buffered
        assert chunks[-1].usage.prompt_tokens == direct.usage.prompt_tokens  # usage from the upstream
        assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
        whole = client.chat.completions.create(model="smol-remote", messages=messages, temperature=0, max_tokens=20)
        assert whole.choices[0].message.content == text
        row = gateway.wait_rows("model = 'smol-remote' AND stream = 1")[0]
        assert row["status"] == "ok" and row["deployment"] == "smol-remote-0"
    finally:
        gateway.stop()
