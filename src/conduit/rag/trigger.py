"""Whether a message needs the documents at all: `auto` retrieval skips greetings and chit-chat,
which would otherwise drag unrelated chunks into the prompt (and answer "not found" to "hi")."""

from __future__ import annotations

import re

_SMALL_TALK = re.compile(
    r"^(hi|hello|hey|hiya|yo|howdy|greetings|good (morning|afternoon|evening|night)|"
    r"thanks?( you)?( (so|very) much)?|thank you|thx|ty|cheers|bye|goodbye|see you( later)?|"
    r"how are you( doing)?( today)?|how's it going|what's up|sup|who are you|what are you|"
    r"ok(ay)?|cool|great|nice|awesome|perfect|lol|haha|yes|no|yep|nope|sure|got it|"
    r"nice to meet you|you're welcome|no problem|sorry)"
    r"( (there|all|everyone|conduit|assistant|bot|again|a lot|mate|friend))?$")


def needs_retrieval(message: str) -> bool:
    words = re.sub(r"[^\w\s']", " ", message.lower()).split()
    if not words:
        return False
    return len(words) > 8 or _SMALL_TALK.match(" ".join(words)) is None
