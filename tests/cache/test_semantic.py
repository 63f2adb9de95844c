"""The semantic cache with the real embedding model: near-misses never hit, paraphrases do.

The two tables are the verifier's measurement. The last block of each (marked "blind") was written
after the rules were final and was not used to tune them: on it 20/20 near-misses are rejected
and 17/20 paraphrases hit. Over the whole table: 0 of 97 near-misses hit, in either direction,
and 74 of 86 paraphrases (86%) hit, in both directions. The misses are all strict on purpose:
an added qualifier ("in the world"), a different verb ("author" for "wrote").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from conduit.backends.embeddings import LocalEmbedder
from conduit.cache.semantic import DEFAULT_THRESHOLD, ExactIndex, HnswIndex, SemanticCache
from conduit.cache.verify import same_meaning, why_different

NEAR_MISSES = [
    # a question and its reversal
    ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius"),
    ("Is Paris bigger than London?", "Is London bigger than Paris?"),
    ("Translate this from English to French", "Translate this from French to English"),
    ("Did Google acquire YouTube?", "Did YouTube acquire Google?"),
    ("Does smoking cause cancer?", "Does cancer cause smoking?"),
    ("How do I convert kilometers to miles?", "How do I convert miles to kilometers?"),
    ("Does the dog chase the cat?", "Does the cat chase the dog?"),
    ("How do I copy files from my laptop to the server?",
     "How do I copy files from the server to my laptop?"),
    ("Is Java faster than Python?", "Is Python faster than Java?"),
    # different named things: nouns, products, files, identifiers
    ("What is the function of TV?", "What is the function of money?"),
    ("How do I install numpy?", "How do I install pandas?"),
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I read config.yaml?", "How do I read config.json?"),
    ("What does get_user return?", "What does get_users return?"),
    ("How do I deploy to AWS?", "How do I deploy to Azure?"),
    ("Who wrote Hamlet?", "Who wrote Macbeth?"),
    ("How do I center a div in React?", "How do I center a div in Vue?"),
    ("What is the time complexity of quicksort?", "What is the space complexity of quicksort?"),
    ("How do I merge two dictionaries in Python?", "How do I merge two lists in Python?"),
    ("What is the difference between TCP and UDP?", "What is the difference between TCP and IP?"),
    ("What is the boiling point of water?", "What is the boiling point of ethanol?"),
    ("How do I cancel my Netflix subscription?", "How do I cancel my Spotify subscription?"),
    ("What does os.path.join do?", "What does os.path.split do?"),
    ("How do I fix a KeyError in Python?", "How do I fix a TypeError in Python?"),
    ("What is the tallest mountain in Europe?", "What is the tallest mountain in Africa?"),
    ("How do I configure nginx as a reverse proxy?",
     "How do I configure Apache as a reverse proxy?"),
    ("What is the syntax of a for loop in Python?",
     "What is the syntax of a while loop in Python?"),
    ("What is the price of gold?", "What is the price of silver?"),
    ("How do I reset my password?", "How do I reset my admin password?"),
    ("How do I reset my router?", "How do I reset my router password?"),
    # different numbers and versions
    ("How do I set up a team for 5 users?", "How do I set up a team for 50 users?"),
    ("What's new in Python 3.11?", "What's new in Python 3.12?"),
    ("What is 15% of 200?", "What is 20% of 200?"),
    ("What happened in 1989?", "What happened in 1998?"),
    ("Does the iPhone 14 support eSIM?", "Does the iPhone 15 support eSIM?"),
    ("Give me three examples of recursion", "Give me five examples of recursion"),
    ("How much RAM do I need for 8 virtual machines?",
     "How much RAM do I need for 16 virtual machines?"),
    ("Is Windows 10 still supported?", "Is Windows 11 still supported?"),
    ("What is 7 times 8?", "What is 7 times 9?"),
    ("How do I split a PDF into 2 files?", "How do I split a PDF into 3 files?"),
    ("What was the population of Japan in 2010?", "What was the population of Japan in 2020?"),
    # negation
    ("Why does my build work?", "Why doesn't my build work?"),
    ("How do I enable two-factor authentication?",
     "How do I not enable two-factor authentication?"),
    ("Is coffee good for you?", "Is coffee not good for you?"),
    ("Which foods contain gluten?", "Which foods do not contain gluten?"),
    ("How do I run tests with coverage?", "How do I run tests without coverage?"),
    ("Which countries require a visa for US citizens?",
     "Which countries don't require a visa for US citizens?"),
    ("Can I take ibuprofen with food?", "Can I take ibuprofen without food?"),
    ("Why is my laptop charging?", "Why is my laptop not charging?"),
    ("Should I use tabs?", "Should I never use tabs?"),
    ("Is it safe to drink tap water in Mexico?", "Is it unsafe to drink tap water in Mexico?"),
    # opposite verbs, adjectives, prepositions
    ("How do I enable notifications?", "How do I disable notifications?"),
    ("How do I increase the font size?", "How do I decrease the font size?"),
    ("How do I add a user to a group?", "How do I remove a user from a group?"),
    ("How do I start the server?", "How do I stop the server?"),
    ("Should I stretch before running?", "Should I stretch after running?"),
    ("What is the maximum file size?", "What is the minimum file size?"),
    ("How do I upload a file to S3?", "How do I download a file from S3?"),
    ("How do I encrypt a file with GPG?", "How do I decrypt a file with GPG?"),
    ("How do I sort a list in ascending order?", "How do I sort a list in descending order?"),
    ("How do I install Node.js?", "How do I uninstall Node.js?"),
    ("How do I lock the screen?", "How do I unlock the screen?"),
    ("What's the best time to buy stocks?", "What's the best time to sell stocks?"),
    ("How do I push to a remote branch?", "How do I pull from a remote branch?"),
    ("How do I make my code run faster?", "How do I make my code run slower?"),
    ("How do I open a port on the firewall?", "How do I close a port on the firewall?"),
    ("How do I connect to the VPN?", "How do I disconnect from the VPN?"),
    ("How do I show line numbers in vim?", "How do I hide line numbers in vim?"),
    ("How do I import contacts into Outlook?", "How do I export contacts from Outlook?"),
    ("How do I zoom in on a map?", "How do I zoom out on a map?"),
    ("What are the advantages of remote work?", "What are the disadvantages of remote work?"),
    ("How do I compress a folder on Mac?", "How do I decompress a folder on Mac?"),
    # question type and tense
    ("Who was the president of France?", "Who is the president of France?"),
    ("When was Einstein born?", "Where was Einstein born?"),
    ("Why does Python use indentation?", "How does Python use indentation?"),
    ("Who invented the telephone?", "When was the telephone invented?"),
    ("Where did the Romans live?", "Where do the Romans live?"),
    # blind
    ("How do I move a file from Downloads to Desktop?",
     "How do I move a file from Desktop to Downloads?"),
    ("Is a whale bigger than an elephant?", "Is an elephant bigger than a whale?"),
    ("How do I install Kubernetes on Ubuntu?", "How do I install Kubernetes on Debian?"),
    ("What is the refund policy for Amazon?", "What is the refund policy for eBay?"),
    ("How do I read a CSV file in R?", "How do I read an Excel file in R?"),
    ("What does the useEffect hook do?", "What does the useState hook do?"),
    ("How do I allocate 4 GB of RAM to Minecraft?", "How do I allocate 8 GB of RAM to Minecraft?"),
    ("What changed in Django 4.2?", "What changed in Django 5.0?"),
    ("Is it bad to sleep 6 hours a night?", "Is it bad to sleep 9 hours a night?"),
    ("Why does my car start in the cold?", "Why doesn't my car start in the cold?"),
    ("Can dogs eat grapes?", "Can't dogs eat grapes?"),
    ("Which animals never sleep?", "Which animals sleep?"),
    ("How do I enable JavaScript in Chrome?", "How do I disable JavaScript in Chrome?"),
    ("How do I raise my credit score?", "How do I lower my credit score?"),
    ("How do I mute a Slack channel?", "How do I unmute a Slack channel?"),
    ("How do I make text bold in Word?", "How do I make text italic in Word?"),
    ("What is the first step in CPR?", "What is the last step in CPR?"),
    ("How do I turn on Bluetooth on Windows?", "How do I turn off Bluetooth on Windows?"),
    ("Where was Mozart born?", "Why was Mozart born?"),
    ("How do I follow someone on Twitter?", "How do I unfollow someone on Twitter?"),
]

PARAPHRASES = [
    ("How do I reset my password?", "How can I reset my password?"),
    ("What's the capital of France?", "What is the capital city of France?"),
    ("Explain recursion", "Can you explain recursion to me?"),
    ("How do I install numpy?", "How can I install numpy?"),
    ("What is the boiling point of water?", "What's the boiling point of water?"),
    ("How do I undo my last git commit?", "How can I undo the last git commit?"),
    ("Why doesn't my build work?", "Why does my build not work?"),
    ("What is the time complexity of quicksort?", "What's quicksort's time complexity?"),
    ("Who wrote Hamlet?", "Who is the author of Hamlet?"),
    ("How do I create a virtual environment in Python?",
     "How can I make a virtual environment in Python?"),
    ("What is the difference between TCP and UDP?", "What's the difference between TCP and UDP?"),
    ("Can you tell me how to center a div in CSS?", "How do I center a div in CSS?"),
    ("How do I delete a branch in git?", "How do I remove a git branch?"),
    ("What does HTTP stand for?", "What does HTTP mean?"),
    ("How do I make pancakes?", "What's the recipe for pancakes?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("What is machine learning?", "Can you explain what machine learning is?"),
    ("How do I convert a string to an integer in Python?",
     "How can I convert a string into an integer in Python?"),
    ("What's the weather like in Tokyo?", "How is the weather in Tokyo?"),
    ("How do I sort a list in Python?", "How can I sort a Python list?"),
    ("Tell me about the French Revolution", "Can you tell me about the French Revolution?"),
    ("What are the symptoms of the flu?", "What symptoms does the flu cause?"),
    ("How do I exit vim?", "How can I quit vim?"),
    ("What's the best way to learn Python?", "How should I learn Python?"),
    ("Is it safe to eat raw eggs?", "Is eating raw eggs safe?"),
    ("How do I check my Python version?", "How can I check which version of Python I have?"),
    ("How do I merge two dictionaries in Python?", "How can I merge 2 dicts in Python?"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("How do I install Docker on Ubuntu?", "How can I install Docker on Ubuntu?"),
    ("What is the population of Canada?", "How many people live in Canada?"),
    ("How do I clear the npm cache?", "How can I clear npm's cache?"),
    ("Explain the difference between a list and a tuple in Python",
     "What's the difference between lists and tuples in Python?"),
    ("How long does it take to boil an egg?", "How long should I boil an egg?"),
    ("What is a closure in JavaScript?", "What are closures in JavaScript?"),
    ("How do I enable dark mode?", "How can I turn on dark mode?"),
    ("What's 2 + 2?", "What is 2 plus 2?"),
    ("How do I change my email address?", "How can I change my email address?"),
    ("What is the speed of light?", "What's the speed of light?"),
    ("How do I uninstall Chrome?", "How can I uninstall Chrome?"),
    ("Why won't my printer connect to wifi?", "Why does my printer not connect to wifi?"),
    ("Explain how vaccines work", "Can you explain how vaccines work?"),
    ("How do I remove duplicates from a list in Python?",
     "How can I delete duplicates from a Python list?"),
    ("What are the benefits of meditation?", "What are the benefits of meditating?"),
    ("How do I find the length of a string in JavaScript?",
     "How can I get the length of a string in JavaScript?"),
    ("How to rename a file in Linux?", "How do I rename a file in Linux?"),
    ("What's the tallest building in the world?", "What is the tallest building in the world?"),
    ("Please explain what a black hole is", "What is a black hole?"),
    ("How do I start a new React project?", "How can I create a new React project?"),
    ("What is the largest ocean on Earth?", "Which ocean is the largest on Earth?"),
    ("How do I turn off autocorrect on my iPhone?", "How do I disable autocorrect on my iPhone?"),
    ("Could you tell me how photosynthesis works?", "How does photosynthesis work?"),
    ("How do I update pip?", "How can I upgrade pip?"),
    ("What is the meaning of life?", "What's the meaning of life?"),
    ("How can I improve my sleep?", "How do I improve my sleep?"),
    ("Is there a way to recover deleted files on Windows?",
     "How can I recover deleted files on Windows?"),
    ("How do I kill a process on port 3000?", "How can I stop the process running on port 3000?"),
    ("What causes earthquakes?", "What causes an earthquake?"),
    ("How do I calculate the area of a circle?", "How can I calculate a circle's area?"),
    ("Who painted the Mona Lisa?", "Who painted the Mona Lisa painting?"),
    ("How do I add a column to a pandas DataFrame?",
     "How can I add a new column to a pandas DataFrame?"),
    ("I want to know how to bake bread", "How do I bake bread?"),
    ("How do I log out of Facebook?", "How can I sign out of Facebook?"),
    ("What is the difference between weather and climate?",
     "What's the difference between weather and climate?"),
    ("How do you make cold brew coffee?", "How do I make cold brew coffee?"),
    ("Translate hello into Spanish", "How do you say hello in Spanish?"),
    ("What year did World War II end?", "When did World War II end?"),
    # blind
    ("How do I clear my browser cache?", "How can I clear my browser's cache?"),
    ("What's the population of Tokyo?", "What is the population of Tokyo?"),
    ("How do I print hello world in Java?", "How can I print hello world in Java?"),
    ("Can you explain quantum entanglement?", "Explain quantum entanglement"),
    ("How do I reverse a string in Python?", "How can I reverse a Python string?"),
    ("What is the chemical formula of water?", "What's the chemical formula for water?"),
    ("Why can't I sleep at night?", "Why am I unable to sleep at night?"),
    ("How do I create a pivot table in Excel?", "How can I make a pivot table in Excel?"),
    ("How do I delete my Instagram account?", "How can I delete my Instagram account?"),
    ("Tell me how to tie a tie", "How do I tie a tie?"),
    ("How many continents are there?", "How many continents are there in the world?"),
    ("How do I check disk space on Linux?", "How can I check the disk space on Linux?"),
    ("What does DNA stand for?", "What does DNA mean?"),
    ("How do I fix a leaking faucet?", "How can I repair a leaking faucet?"),
    ("How do I switch off location services on Android?",
     "How do I disable location services on Android?"),
    ("Who discovered penicillin?", "Who was the discoverer of penicillin?"),
    ("What is the best way to learn Spanish?", "How can I learn Spanish?"),
    ("How do I take a screenshot on a Mac?", "How can I take a screenshot on Mac?"),
    ("What are the main causes of inflation?",
     "What are the main causes of inflation in an economy?"),
    ("How do I set up SSH keys on GitHub?", "How can I set up SSH keys for GitHub?"),
]
PARAPHRASE_HIT_RATE = 74 / 86  # measured; both directions give the same result


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    model = LocalEmbedder()
    model.encode(["load the model once for the module"])
    return model


async def _hits(cache: SemanticCache, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each pair in a namespace of its own, both directions: the pairs whose lookup hit."""
    hit = []
    for i, (first, second) in enumerate(pairs):
        for direction, (stored, asked) in enumerate(((first, second), (second, first))):
            namespace = f"pair-{i}-{direction}"
            await cache.store(namespace, stored, answer=stored)
            if await cache.lookup(namespace, asked) is not None:
                hit.append((stored, asked))
    return hit


def test_tables_are_large_enough() -> None:
    assert len(NEAR_MISSES) >= 25 and len(PARAPHRASES) >= 25
    assert len(set(NEAR_MISSES)) == len(NEAR_MISSES) and len(set(PARAPHRASES)) == len(PARAPHRASES)


def test_verifier_rejects_every_near_miss_in_both_directions() -> None:
    accepted = [(a, b) for a, b in NEAR_MISSES if same_meaning(a, b) or same_meaning(b, a)]
    assert accepted == []


def test_no_near_miss_hits_the_cache(embedder: LocalEmbedder) -> None:
    cache = SemanticCache(embedder, max_entries=1_000)
    assert asyncio.run(_hits(cache, NEAR_MISSES)) == []
    assert sum(cache.rejections.values()) > 0  # the verifier, not the threshold, did much of it


def test_similarity_alone_would_serve_near_misses(embedder: LocalEmbedder) -> None:
    # Why the verifier exists: at the same threshold, without it, many near-misses hit.
    cache = SemanticCache(embedder, max_entries=1_000, verify=False)
    false_hits = asyncio.run(_hits(cache, NEAR_MISSES))
    assert len(false_hits) >= len(NEAR_MISSES) // 2
    assert ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius") in false_hits


def test_paraphrase_hit_rate(embedder: LocalEmbedder) -> None:
    cache = SemanticCache(embedder, max_entries=1_000)
    hits = asyncio.run(_hits(cache, PARAPHRASES))
    rate = len(hits) / (2 * len(PARAPHRASES))
    assert rate >= PARAPHRASE_HIT_RATE - 1e-9, f"paraphrase hit rate {rate:.1%}"
    for required in PARAPHRASES[:3]:  # the issue's own examples
        assert required in hits and required[::-1] in hits


@pytest.mark.parametrize(("first", "second", "rule"), [
    ("How many 5 users", "How many 50 users", "numbers"),
    ("Why doesn't X work?", "Why does X work?", "negation"),
    ("How do I enable X?", "How do I disable X?", "opposite"),
    ("When was she born?", "Where was she born?", "question type"),
    ("Who is the CEO?", "Who was the CEO?", "tense"),
    ("What is the function of TV?", "What is the function of money?", "content"),
    ("Convert Celsius to Fahrenheit", "Convert Fahrenheit to Celsius", "roles reversed"),
])
def test_rejections_name_their_rule(first: str, second: str, rule: str) -> None:
    reason = why_different(first, second)
    assert reason is not None and reason.startswith(rule), reason


def test_namespaces_never_see_each_other(embedder: LocalEmbedder) -> None:
    async def scenario() -> None:
        cache = SemanticCache(embedder)
        await cache.store("tenant-a|model-x", "How do I reset my password?", "answer for a")
        assert await cache.lookup("tenant-b|model-x", "How do I reset my password?") is None
        assert await cache.lookup("tenant-a|model-y", "How can I reset my password?") is None
        hit = await cache.lookup("tenant-a|model-x", "How can I reset my password?")
        assert hit is not None and hit.answer == "answer for a"
        assert hit.question == "How do I reset my password?"
        assert DEFAULT_THRESHOLD <= hit.similarity <= 1.0 + 1e-6

    asyncio.run(scenario())


def test_entries_expire_after_their_ttl(embedder: LocalEmbedder) -> None:
    now = [1000.0]
    cache = SemanticCache(embedder, ttl_s=60, clock=lambda: now[0])

    async def scenario() -> None:
        await cache.store("ns", "What is the speed of light?", "c")
        now[0] += 59
        assert await cache.lookup("ns", "What's the speed of light?") is not None
        now[0] += 2
        assert await cache.lookup("ns", "What is the speed of light?") is None
        assert await cache.lookup("ns", "What's the speed of light?") is None
        assert len(cache) == 0

    asyncio.run(scenario())


def test_least_recently_used_entry_is_evicted(embedder: LocalEmbedder) -> None:
    cache = SemanticCache(embedder, max_entries=3)
    questions = ["How do I exit vim?", "What is a closure in JavaScript?",
                 "How do I update pip?", "What causes earthquakes?"]

    async def scenario() -> None:
        for question in questions[:3]:
            await cache.store("ns", question, question)
        assert await cache.lookup("ns", "How can I quit vim?") is not None  # now most recent
        await cache.store("ns", questions[3], questions[3])
        assert len(cache) == 3
        assert await cache.lookup("ns", "What are closures in JavaScript?") is None  # evicted
        for kept in (questions[0], questions[2], questions[3]):
            assert await cache.lookup("ns", kept) is not None

    asyncio.run(scenario())


def test_invalidating_a_collection_drops_the_answers_that_read_it(embedder: LocalEmbedder) -> None:
    cache = SemanticCache(embedder)

    async def scenario() -> None:
        await cache.store("ns", "What is our refund policy?", 1, frozenset({"docs"}))
        await cache.store("ns", "How do I contact support?", 2, frozenset({"docs", "faq"}))
        await cache.store("ns", "What are the opening hours?", 3, frozenset({"faq"}))
        await cache.store("ns", "What is the speed of light?", 4)
        assert cache.invalidate_collection("docs") == 2
        assert await cache.lookup("ns", "What's our refund policy?") is None
        assert await cache.lookup("ns", "How can I contact support?") is None
        assert (await cache.lookup("ns", "What are the opening hours?")).answer == 3
        assert cache.invalidate_collection("faq") == 1
        assert cache.invalidate_collection("unknown") == 0
        assert len(cache) == 1

    asyncio.run(scenario())


def test_storing_a_question_again_replaces_its_answer(embedder: LocalEmbedder) -> None:
    async def scenario() -> None:
        cache = SemanticCache(embedder)
        await cache.store("ns", "Explain recursion", "old")
        await cache.store("ns", "Explain recursion", "new")
        assert len(cache) == 1
        assert (await cache.lookup("ns", "Can you explain recursion to me?")).answer == "new"

    asyncio.run(scenario())


class CountingEmbedder:
    """The real model, counting the texts it is asked to embed."""

    def __init__(self, model: LocalEmbedder) -> None:
        self.model, self.dimensions, self.texts = model, model.dimensions, 0

    async def aencode(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return await self.model.aencode(texts)


def test_each_question_is_embedded_once(embedder: LocalEmbedder) -> None:
    counting = CountingEmbedder(embedder)
    cache = SemanticCache(counting)

    async def scenario() -> None:
        assert await cache.lookup("ns", "How do I exit vim?") is None  # empty namespace: no work
        await cache.store("ns", "How do I exit vim?", "answer")
        assert counting.texts == 1
        assert await cache.lookup("ns", "How can I quit vim?") is not None
        await cache.store("ns", "How can I quit vim?", "answer")  # a miss, then its store
        assert counting.texts == 2
        hit = await cache.lookup("ns", "How do I exit vim?")  # the same text: no embedding
        assert hit is not None and hit.similarity == 1.0 and counting.texts == 2

    asyncio.run(scenario())


def test_concurrent_stores_and_lookups(embedder: LocalEmbedder) -> None:
    questions = [f"What is the capital of country number {n}?" for n in range(40)]

    async def scenario() -> None:
        cache = SemanticCache(embedder, max_entries=30)
        await asyncio.gather(*(cache.store("ns", q, q) for q in questions),
                             *(cache.lookup("ns", q) for q in questions))
        assert len(cache) == 30
        hits = await asyncio.gather(*(cache.lookup("ns", q) for q in questions))
        assert all(hit is None or hit.answer == q for hit, q in zip(hits, questions, strict=True))
        assert sum(hit is not None for hit in hits) == 30

    asyncio.run(scenario())


@pytest.fixture(params=[ExactIndex, HnswIndex], ids=["exact", "hnsw"])
def random_index(request: pytest.FixtureRequest) -> Iterator[tuple[object, np.ndarray]]:
    vectors = np.random.default_rng(7).standard_normal((600, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    yield request.param(32, 16), vectors


def test_index_deletes_and_reuses_slots_without_rebuilding(random_index) -> None:
    index, vectors = random_index
    for key in range(500):
        index.add(key, vectors[key])
    assert len(index) == 500
    assert index.nearest(vectors[42], 1)[0][0] == 42
    for key in range(0, 500, 2):
        index.remove(key)
    assert len(index) == 250
    found = {key for v in vectors[:500:2] for key, _ in index.nearest(v, 5)}
    assert found and all(key % 2 == 1 for key in found)  # deleted keys never come back
    for key in range(500, 600):  # reuse the freed slots
        index.add(key, vectors[key])
    assert len(index) == 350
    for key in (501, 599, 7):
        best, similarity = index.nearest(vectors[key], 1)[0]
        assert best == key and similarity == pytest.approx(1.0, abs=1e-5)
