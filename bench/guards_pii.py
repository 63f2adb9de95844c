"""PII guard benchmark: span-level precision/recall per entity on generated text, and latency.

    python bench/guards_pii.py [--sentences 600] [--seed 7]

Text: presidio-evaluator's sentence templates (raw_data/templates.txt) filled with its fake
identities (FakeNameGenerator.com_3000.csv: names, e-mails, phones with country code) and
seeded Faker values (cards, IBANs, SSNs, IPs, addresses...). Its templates have no secrets and
few IBANs/SSNs/IPs, so this file adds its own templates for those, plus hard negatives: prose
and code full of numbers, Luhn-invalid card numbers, IBANs with a wrong check digit.

A predicted span is correct when it overlaps a labelled span of the same entity ("overlap";
"exact" needs equal boundaries). Peer in the same run: naive regexes with no checksum and no
context. Latency: `find` and `redact` (with a vault) at ~200 and ~2,000 characters, of
PII-dense and of sparse text; startup: import and first build in a fresh interpreter.
Writes bench/results/guards_pii.json. `run()` is what bench/guards.py calls.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import os
import random
import re
import statistics
import string
import subprocess
import sys
import time
from pathlib import Path

from faker import Faker

from conduit.safety.pii import ENTITIES, PiiScanner, PiiSpan, Vault

OUT = Path(__file__).resolve().parent / "results" / "guards_pii.json"
# Faker's card types minus 12-digit Maestro, 19-digit Visa and 15-digit JCB (2131/1800):
# rare in practice, and presidio's card pattern does not cover them.
CARD_TYPES = ("visa16", "visa13", "mastercard", "amex", "discover", "diners", "jcb16")
SWEEP = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
TEMPLATE_ENTITY = {
    "email": "EMAIL_ADDRESS",
    "phone_number": "PHONE_NUMBER",
    "credit_card_number": "CREDIT_CARD",
    "iban": "IBAN_CODE",
    "ssn": "US_SSN",
    "ip_address": "IP_ADDRESS",
    "secret": "SECRET",
    "password": "SECRET",
}
OWN_TEMPLATES = [
    "Here is my config: OPENAI_API_KEY={{secret}} — why does it say unauthorized?",
    'My .env has API_KEY="{{secret}}" but the client still fails.',
    "export AWS_ACCESS_KEY_ID={{secret}}\nexport AWS_DEFAULT_REGION=eu-west-1",
    "curl -H 'Authorization: Bearer {{secret}}' https://api.example.org/v1/models",
    "I pasted the token {{secret}} into the CI settings, is that safe?",
    'db = connect(host="db.internal", user="app", password="{{password}}")',
    "my password is {{password}} and it stopped working after the reset",
    "login: {{first_name}}, pwd: {{password}} — please keep it private",
    '{"client_id": "web", "client_secret": "{{secret}}"}',
    "Can you debug this? requests.get(url, headers={'x-api-key': '{{secret}}'}) returns 403",
    "The deploy key is below, please rotate it:\n{{secret}}",
    "Please wire the deposit to {{iban}} before Friday.",
    "New bank details for payroll: {{iban}} (account holder {{person}})",
    "Can you check why the transfer from {{iban}} bounced?",
    "My social security number is {{ssn}}, I need it on the W-2 form.",
    "SSN {{ssn}} — please update the tax record for {{person}}.",
    "The firewall logs show repeated logins from {{ip_address}} overnight.",
    "ssh admin@{{ip_address}} hangs after the key exchange",
    "Whitelist {{ip_address}} and {{ip_address}} for the staging cluster.",
    "You can reach {{person}} on {{phone_number}} or by mail at {{email}}.",
    "Forward the invoice to {{email}} and cc {{email}}.",
    "My Visa {{credit_card_number}} was charged twice for order {{order}}.",
]
NEGATIVE_TEMPLATES = [
    "Release {{version}} fixes 12 bugs; upgrade from {{version}} with pip install -U pkg.",
    "for i in range({{n}}):\n    total += weights[i] * 0.{{n}}\nprint(f'{total:.3f}')",
    "Order {{order}} shipped on {{date}}, 3 items, total $1,{{n}}.99.",
    "The commit {{sha}} broke the build at 14:{{n2}} UTC; revert to {{sha}}.",
    "Use uuid {{uuid}} as the idempotency key for retries.",
    "My card number is {{bad_card}}, or is it? The site says invalid.",
    "The IBAN {{bad_iban}} was rejected by the bank as invalid.",
    "password = os.environ['DB_PASSWORD']  # never hardcode the password",
    "api_key: str = settings.api_key; token = None",
    "Set the timeout to {{n}} ms and the retry count to {{n2}}; port 8080 stays open.",
    "Population grew from 1,{{n}},000 in 1990 to 2,{{n}},500 in 2020.",
    "Matrix shape (1024, 768) with 12 heads, lr 3e-4, batch 256, seed {{n}}.",
    "Ship it to {{city}}, ZIP {{zip4}}; the tracking number is {{nine_digits}}.",
    "Invoice {{nine_digits}} is overdue by {{n}} days, see ticket {{zip4}}.",
]


def run(n_sentences: int = 600, seed: int = 7, latency_rounds: int = 200) -> dict:
    load_average = round(os.getloadavg()[0], 2)
    samples = generate(n_sentences, seed)
    scanners = {"presidio": PiiScanner(), "naive_regex": NaiveRegexScanner()}
    quality = {name: evaluate(s, samples) for name, s in scanners.items()}
    sweep = {str(m): evaluate(PiiScanner(min_score=m), samples)["overall"] for m in SWEEP}
    texts = latency_texts(samples)
    latency = {
        f"{op}_{size}": measure(op_fn, texts[size], latency_rounds)
        for size in texts
        for op, op_fn in operations(scanners["presidio"]).items()
    }
    return {
        "machine": "2-core VM shared with other work",
        "load_average_1m_at_start": load_average,
        "samples": len(samples),
        "labelled_spans": sum(len(s[1]) for s in samples),
        "seed": seed,
        "match": "overlap, same entity",
        "quality": quality,
        "min_score_sweep": sweep,
        "latency_ms": latency,
        "startup_s": startup_times(),
    }


# --- data --------------------------------------------------------------------------------


def generate(n: int, seed: int) -> list[tuple[str, list[PiiSpan]]]:
    """(text, labelled spans). presidio-evaluator is only read for its data files, never
    imported: its generator needs pandas, spaCy, transformers... (`pip install --no-deps`)."""
    rng = random.Random(seed)
    fakers = {loc: Faker(loc) for loc in ("en_US", "en_GB", "de_DE", "fr_FR", "en_IN", "nl_NL")}
    for i, fake in enumerate(fakers.values()):
        fake.seed_instance(seed + i)
    data = Path(importlib.util.find_spec("presidio_evaluator").submodule_search_locations[0])
    raw = data / "data_generator" / "raw_data"
    templates = [
        t.replace("\\n", "\n").replace("\\,", ",")
        for t in (raw / "templates.txt").read_text("utf-8").splitlines()
        if t.strip()
    ]
    with open(raw / "FakeNameGenerator.com_3000.csv", encoding="utf-8-sig") as f:
        identities = list(csv.DictReader(f))
    ours = [t for t in templates if any("{{" + k + "}}" in t for k in TEMPLATE_ENTITY)]
    others = [t for t in templates if t not in ours]
    pools = [(ours, 0.45), (OWN_TEMPLATES, 0.3), (others, 0.1), (NEGATIVE_TEMPLATES, 0.15)]
    samples = []
    for _ in range(n):
        pool = rng.choices([p for p, _ in pools], [w for _, w in pools])[0]
        identity = rng.choice(identities)
        samples.append(fill(rng.choice(pool), Filler(rng, fakers, identity)))
    return samples


def fill(template: str, filler: Filler) -> tuple[str, list[PiiSpan]]:
    out, spans, cursor = "", [], 0
    for m in re.finditer(r"{{(\w+)}}", template):
        out += template[cursor : m.start()]
        value = filler.value(m.group(1))
        if m.group(1) in TEMPLATE_ENTITY:
            spans.append(PiiSpan(TEMPLATE_ENTITY[m.group(1)], len(out), len(out) + len(value), 1))
        out += value
        cursor = m.end()
    return out + template[cursor:], spans


class Filler:
    def __init__(self, rng: random.Random, fakers: dict[str, Faker], identity: dict) -> None:
        self.rng, self.fakers, self.who = rng, fakers, identity
        self.us = fakers["en_US"]

    def value(self, name: str) -> str:
        rng, who = self.rng, self.who
        person = f"{who['GivenName']} {who['Surname']}"
        fixed = {
            "email": who["EmailAddress"],
            "person": person,
            "name": person,
            "first_name": who["GivenName"],
            "last_name": who["Surname"],
            "organization": who["Company"],
            "city": who["City"],
            "country": who["CountryFull"],
            "age": who["Age"],
            "n": str(rng.randint(2, 999)),
            "n2": f"{rng.randint(0, 59):02}",
            "order": f"#{rng.randint(10000, 99999)}",
            "date": self.us.date(),
            "version": f"{rng.randint(0, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 9)}",
            "sha": self.us.sha1()[: rng.choice((7, 40))],
            "uuid": self.us.uuid4(),
            "zip4": f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
            "nine_digits": str(rng.randint(100_000_000, 999_999_999)),
        }
        if name in fixed:
            return fixed[name]
        if name == "phone_number":
            if rng.random() < 0.4:
                return f"+{who['TelephoneCountryCode']} {who['TelephoneNumber']}"
            return self.fakers[
                rng.choice(("en_US", "en_GB", "de_DE", "fr_FR", "en_IN"))
            ].phone_number()
        if name in ("credit_card_number", "bad_card"):
            digits = self.us.credit_card_number(rng.choice(CARD_TYPES))
            if name == "bad_card":
                digits = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
            return card_format(digits, rng.choice(("", " ", "-")))
        if name in ("iban", "bad_iban"):
            iban = self.fakers[rng.choice(("en_GB", "de_DE", "fr_FR", "nl_NL"))].iban()
            if name == "bad_iban":
                iban = iban[:2] + f"{(int(iban[2:4]) + rng.randint(1, 9)) % 100:02}" + iban[4:]
            return group(iban, rng.choice(("", " ")))
        if name == "ssn":
            ssn = self.us.ssn()
            return rng.choices([ssn, ssn.replace("-", " "), ssn.replace("-", "")], [7, 2, 1])[0]
        if name == "ip_address":
            return self.us.ipv4() if rng.random() < 0.75 else self.us.ipv6()
        if name == "secret":
            return fake_secret(rng)
        if name == "password":
            return self.us.password(length=rng.randint(8, 16))
        if name.startswith(("nation", "nationality")):
            return "Canadian"
        fake = getattr(self.us, name, None)
        return str(fake()) if callable(fake) else "Alex"


def card_format(digits: str, sep: str) -> str:
    """How cards are printed: 4-4-4-4, Amex 4-6-5, Diners 4-6-4; other lengths unbroken."""
    cuts = {16: (4, 8, 12), 15: (4, 10), 14: (4, 10)}.get(len(digits))
    if not sep or not cuts:
        return digits
    bounds = (0, *cuts, len(digits))
    return sep.join(digits[a:b] for a, b in itertools.pairwise(bounds))


def group(value: str, sep: str) -> str:
    return sep.join(value[i : i + 4] for i in range(0, len(value), 4)) if sep else value


def fake_secret(rng: random.Random) -> str:
    def chars(n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    upper = string.ascii_uppercase + string.digits
    kinds = [
        f"sk-proj-{chars(48)}",
        f"sk-{chars(48)}",
        f"AKIA{chars(16, upper)}",
        f"ghp_{chars(36)}",
        f"github_pat_{chars(22)}_{chars(59)}",
        f"xoxb-{chars(12)}-{chars(24)}",
        f"AIza{chars(35)}",
        f"sk_live_{chars(24)}",
        f"eyJ{chars(20)}.eyJ{chars(40)}.{chars(43)}",
        f"-----BEGIN RSA PRIVATE KEY-----\n{chars(64)}\n{chars(40)}\n-----END RSA PRIVATE KEY-----",
    ]
    return rng.choice(kinds)


# --- the naive peer ----------------------------------------------------------------------

NAIVE = {
    "SECRET": r"\b(?:sk-|AKIA|gh[pousr]_|github_pat_|xox[baprs]-|AIza|sk_live_|eyJ)\S+"
    r"|(?i:password|secret|api_key|token)\s*[:=]\s*\S+",
    "EMAIL_ADDRESS": r"[\w.+-]+@[\w-]+\.[\w.-]+",
    "IBAN_CODE": r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
    "CREDIT_CARD": r"\b(?:\d[ -]?){12,18}\d\b",
    "US_SSN": r"\b\d{3}[- ]\d{2}[- ]\d{4}\b",
    "IP_ADDRESS": r"\b(?:\d{1,3}\.){3}\d{1,3}\b|\b(?:[0-9a-fA-F]{1,4}:){2,7}[0-9a-fA-F]{1,4}\b",
    "PHONE_NUMBER": r"\+?\(?\d[\d ().-]{6,}\d",
}


class NaiveRegexScanner:
    """Plain regexes, no checksum, no context; earlier entities win overlaps."""

    def find(self, text: str) -> list[PiiSpan]:
        spans: list[PiiSpan] = []
        for entity, pattern in NAIVE.items():
            for m in re.finditer(pattern, text):
                if all(m.end() <= s.start or m.start() >= s.end for s in spans):
                    spans.append(PiiSpan(entity, m.start(), m.end(), 1.0))
        return sorted(spans, key=lambda s: s.start)


# --- scoring and timing ------------------------------------------------------------------


def evaluate(scanner, samples: list[tuple[str, list[PiiSpan]]]) -> dict:
    counts = {
        e: {"pred": 0, "pred_ok": 0, "gold": 0, "gold_found": 0, "exact": 0} for e in ENTITIES
    }
    for text, gold in samples:
        pred = scanner.find(text)
        for p in pred:
            c = counts[p.entity]
            c["pred"] += 1
            c["pred_ok"] += any(overlaps(p, g) for g in gold)
            c["exact"] += any(
                (p.start, p.end, p.entity) == (g.start, g.end, g.entity) for g in gold
            )
        for g in gold:
            counts[g.entity]["gold"] += 1
            counts[g.entity]["gold_found"] += any(overlaps(p, g) for p in pred)
    result = {e: scores(c) for e, c in counts.items()}
    total = {k: sum(c[k] for c in counts.values()) for k in counts["SECRET"]}
    result["overall"] = scores(total)
    return result


def overlaps(a: PiiSpan, b: PiiSpan) -> bool:
    return a.entity == b.entity and a.start < b.end and b.start < a.end


def scores(c: dict) -> dict:
    p = c["pred_ok"] / c["pred"] if c["pred"] else 1.0
    r = c["gold_found"] / c["gold"] if c["gold"] else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    exact_p = c["exact"] / c["pred"] if c["pred"] else 1.0
    return {
        "precision": round(p, 3),
        "recall": round(r, 3),
        "f1": round(f1, 3),
        "exact_precision": round(exact_p, 3),
        "support": c["gold"],
        "predicted": c["pred"],
    }


def latency_texts(samples: list[tuple[str, list[PiiSpan]]]) -> dict[str, list[str]]:
    """20 texts per size: "dense" strings sampled sentences together (~1 PII per 100 chars),
    "sparse" has one PII-bearing sentence and fills up with sentences that have none."""
    rng = random.Random(0)
    with_pii = [text for text, gold in samples if gold]
    pools = {"dense": [text for text, _ in samples], "sparse": [t for t, g in samples if not g]}
    out: dict[str, list[str]] = {}
    for kind, pool in pools.items():
        for size in (200, 2000):
            texts = []
            for _ in range(20):
                text = rng.choice(with_pii) + " "
                while len(text) < size:
                    text += rng.choice(pool) + " "
                texts.append(text[:size])
            out[f"{kind}_{size}"] = texts
    return out


def operations(scanner: PiiScanner) -> dict:
    return {"find": scanner.find, "redact": lambda text: scanner.redact(text, Vault())}


def measure(fn, texts: list[str], rounds: int) -> dict:
    for text in texts:
        fn(text)
    timings = []
    for i in range(rounds):
        start = time.perf_counter()
        fn(texts[i % len(texts)])
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {
        "p50": round(statistics.median(timings), 3),
        "p99": round(timings[int(0.99 * (len(timings) - 1))], 3),
    }


def startup_times() -> dict:
    """Fresh interpreter: import our module, import presidio (spaCy...), build the recognizers."""
    code = (
        "import time; t=[time.perf_counter()]; import conduit.safety.pii as p; "
        "t.append(time.perf_counter()); import presidio_analyzer; t.append(time.perf_counter()); "
        "p.PiiScanner(); t.append(time.perf_counter()); "
        "print(*(b - a for a, b in zip(t, t[1:])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    module_s, presidio_s, build_s = (float(x) for x in out.stdout.split())
    return {
        "import_conduit_safety_pii": round(module_s, 3),
        "import_presidio_analyzer": round(presidio_s, 2),
        "build_recognizers": round(build_s, 2),
    }


def print_report(result: dict) -> None:
    print(
        f"{result['samples']} sentences, {result['labelled_spans']} labelled spans, "
        f"match: {result['match']}"
    )
    print(f"{'entity':<14}{'support':>8}  {'presidio P/R/F1':>20}  {'naive regex P/R/F1':>20}")
    for entity in (*ENTITIES, "overall"):
        row = [result["quality"][name][entity] for name in ("presidio", "naive_regex")]
        cells = ["{precision:.2f}/{recall:.2f}/{f1:.2f}".format(**r) for r in row]
        print(f"{entity:<14}{row[0]['support']:>8}  {cells[0]:>20}  {cells[1]:>20}")
    print("min_score sweep (overall P/R/F1):")
    for m, r in result["min_score_sweep"].items():
        print(f"  {m:>5}: {r['precision']:.3f}/{r['recall']:.3f}/{r['f1']:.3f}")
    for key, value in result["latency_ms"].items():
        print(f"{key:<20} p50 {value['p50']:.2f} ms  p99 {value['p99']:.2f} ms")
    print(
        "startup (s):", result["startup_s"], "| load average:", result["load_average_1m_at_start"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    result = run(args.sentences, args.seed)
    print_report(result)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
