"""`conduit guards scan` and `conduit guards train`: the guards from the command line.

`scan` shows what the input guards make of a text (the injection detector's score and signals,
the PII found and the redacted text) without a server; `train` re-trains the shipped
prompt-injection detector from the labelled data of the `guards` extra.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

guards_app = typer.Typer(help="Try and re-train the guards.", no_args_is_help=True)
console = Console()


@guards_app.command("scan")
def scan(
    text: Annotated[str | None, typer.Argument(help="The text; '-' or nothing reads standard input.")] = None,
    threshold: Annotated[float | None, typer.Option(help="Injection threshold (default: the detector's).")] = None,
) -> None:
    """Score a text for prompt injection and list the PII in it, as the input guards would."""
    from conduit.safety.injection import InjectionDetector
    from conduit.safety.pii import PiiScanner

    if text is None or text == "-":
        text = sys.stdin.read()
    detector = InjectionDetector.load(threshold=threshold)
    verdict = detector.check(text)
    label = "[red]injection[/red]" if verdict.flagged else "[green]pass[/green]"
    console.print(f"injection: {label}  score {verdict.score:.3f} (threshold {detector.threshold:.3f})"
                  + (f"  signals: {', '.join(verdict.signals)}" if verdict.signals else ""))
    redacted, spans = PiiScanner().redact(text)
    if not spans:
        console.print("PII: none found")
        return
    table = Table("entity", "text", "score")
    for span in spans:
        table.add_row(span.entity, text[span.start:span.end], f"{span.score:.2f}")
    console.print(table)
    console.print(f"redacted: {redacted}")


@guards_app.command("train")
def train(
    out: Annotated[Path | None, typer.Option(help="Where to write the artifact (default: the shipped one).")] = None,
    documents: Annotated[bool, typer.Option(
        "--documents", help="Train the detector of retrieved documents instead of messages.")] = False,
) -> None:
    """Re-train the prompt-injection detector of messages, or with --documents the one of
    retrieved documents (needs `pip install -e '.[guards]'`)."""
    if documents:
        from conduit.safety.train_documents import main
    else:
        from conduit.safety.train_injection import main

    main(["--out", str(out)] if out is not None else [])
