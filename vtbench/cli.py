"""The ``vtbench`` command line (typer). Thin: parsing and printing only; the work is in the library.

Machine-readable output (``--json``) goes to stdout; progress and logs go to stderr. Arguments are checked before
anything heavy is imported (torch, metrics, adapters load inside the commands that need them), so ``--help``, a
misspelt name, ``ls`` and ``info`` answer in well under a second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from vtbench.extras import MissingExtra

app = typer.Typer(add_completion=False, no_args_is_help=False, help="Benchmark and evaluate visual tokenizers.",
                  pretty_exceptions_enable=False)
ls_app = typer.Typer(help="List tokenizers, metrics, protocols or preprocessing policies.")
app.add_typer(ls_app, name="ls")

log = logging.getLogger("vtbench")

CARDS_HELP = ("Card file or folder of cards (*.toml) to add to the built-in ones (repeatable); also "
              "$VTBENCH_CARDS (os.pathsep-separated) and installed packages' 'vtbench.cards' entry points.")


def _version(value: bool) -> None:
    if value:
        from vtbench import __version__
        typer.echo(f"vtbench {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Benchmark and evaluate visual tokenizers."""


def _use_cards(cards: Optional[list[Path]]) -> None:
    """Add ``--cards`` paths and load every card once, so a broken card or a clash fails here (exit 2)."""
    from vtbench.cards import CardError, use_cards
    from vtbench.config import all_cards
    use_cards(cards)
    try:
        all_cards()
    except CardError as exc:
        _fail(str(exc), 2)


def _check_tokenizer(name: Optional[str]) -> None:
    """Exit 2 with a did-you-mean for an unknown tokenizer name (before any heavy import)."""
    if name is None:
        return
    from vtbench.config import get_card
    from vtbench.registry import UnknownNameError
    try:
        get_card(name)
    except UnknownNameError as exc:
        _fail(str(exc), 2)


def _setup_logging(verbose: bool, quiet: bool) -> None:
    from rich.console import Console
    from rich.logging import RichHandler
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0 and not verbose:  # torchrun: other ranks log warnings only
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", datefmt="[%X]",
                        handlers=[RichHandler(console=Console(stderr=True), show_path=False)], force=True)


TRUST_HELP = ("Unpickle a checkpoint that weights-only loading and the inert reader refuse. This runs arbitrary "
              "code from the file: only for files you trust (then `vtbench weights convert FILE "
              "--trust-checkpoint` once and load the safetensors copy).")


def _fail(msg: str, code: int = 1) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _run_summary(rec: dict[str, Any], path: Path) -> dict[str, Any]:
    return {
        "tokenizer": rec["tokenizer"]["name"], "dataset": rec["dataset"]["id"],
        "n": rec["dataset"]["n_used"], "protocol": f"{rec['protocol']['name']}@{rec['protocol']['version']}",
        "metrics": {k: _json_safe(v["value"]) for k, v in rec["metrics"].items()},
        "reasons": {k: v["reason"] for k, v in rec["metrics"].items() if v.get("reason")},
        "result": str(path),
    }


@app.command()
def run(
    tokenizer: Optional[list[str]] = typer.Option(
        None, "--tokenizer", "-t",
        help="family.variant (repeatable; wildcards ok). Default: every default-run tokenizer."),
    data: Optional[str] = typer.Option(
        None, "--data", "-d",
        help="'embedded', 'embedded/<subset>', an image folder, or parquet file(s). Default: the protocol's "
             "(embedded; embedded/text for --task text, embedded/detail for --task detail)."),
    task: Optional[str] = typer.Option(
        None, "--task",
        help="reconstruction, text, detail or shape: picks that task's protocol (and its default data)."),
    annotations: Optional[Path] = typer.Option(
        None, "--annotations",
        help="Word manifest (JSONL) for the text task; default: words.jsonl / text_words.jsonl next to the data."),
    metrics: Optional[str] = typer.Option(
        None, "--metrics", "-m",
        help="Comma-separated metrics or output keys (default: the protocol's)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results directory."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Deterministic subset of N images."),
    batch_size: int = typer.Option(16, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    protocol: Optional[str] = typer.Option(
        None, "--protocol",
        help="Protocol file name under metrics/ (default: reconstruction, or the --task's)."),
    preprocess: Optional[str] = typer.Option(
        None, "--preprocess",
        help="adm-center-crop, resize-cover-crop, pad-restore, native, native-or-pad, torchvision-resize-crop "
             "(`vtbench ls policies`)."),
    resolution: Optional[int] = typer.Option(None, "--resolution"),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file (single tokenizer)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help=TRUST_HELP),
    save_reconstructions: Optional[Path] = typer.Option(
        None, "--save-reconstructions",
        help="Write reconstructions as PNG under the original names."),
    force: bool = typer.Option(False, "--force", help="Recompute completed runs."),
    seed: int = typer.Option(0, "--seed"),
    seeds: Optional[str] = typer.Option(
        None, "--seeds",
        help="Comma-separated decoder seeds for tokenizers that sample (flow/diffusion decoders), e.g. 0,1,2: one "
             "record per seed plus their mean and spread. Deterministic tokenizers run once."),
    sweep: bool = typer.Option(
        False, "--sweep",
        help="Run every setting of a rate sweep named with -t (e.g. -t restok.l-128 --sweep: k = 4 ... 128)."),
    workers: Optional[int] = typer.Option(
        None, "--workers",
        help="DataLoader worker processes per process (default: the spare cores, at most 8; 0 on <= 2 cores)."),
    precision: str = typer.Option(
        "fp32", "--precision",
        help="fp32, bf16 or fp16 for the tokenizer's forward passes (metrics always fp32); recorded."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Evaluate tokenizers on a dataset (no arguments: all default reference/tiny tokenizers on the embedded data)."""
    _use_cards(cards)
    if precision not in ("fp32", "bf16", "fp16"):
        _fail(f"--precision {precision!r}: expected fp32, bf16 or fp16", 2)
    from vtbench.config import ProtocolError, get_card, load_protocol, protocol_for_task
    from vtbench.registry import UnknownNameError
    from vtbench.tokenizers import list_tokenizers

    # names, task and protocol are checked before the runner (torch, metrics) is imported
    try:
        names: list[str] = []
        for t in tokenizer or []:
            matched = list_tokenizers(t) if any(c in t for c in "*?[") else [get_card(t).name]
            if not matched:
                _fail(f"no tokenizer matches {t!r} (see `vtbench ls tokenizers`)", 2)
            if sweep:
                expanded = [s for m in matched for s in (get_card(m).sweep_settings or [m])]
                if expanded == matched:
                    _fail(f"--sweep: {t!r} names no rate sweep (sweeps: "
                          f"{', '.join(n for n in list_tokenizers() if get_card(n).sweep_settings) or 'none'})", 2)
                matched = expanded
            names += matched
        if weights and len(names) != 1:
            _fail("--weights applies to exactly one --tokenizer", 2)
        if task is not None:
            chosen = protocol_for_task(task)
            if protocol is not None and load_protocol(protocol).task != task:
                _fail(f"--protocol {protocol} is not a {task!r} protocol (use --protocol {chosen} or drop one)", 2)
            protocol = protocol or chosen
        task_name = load_protocol(protocol or "reconstruction").task
        names = names or list_tokenizers(default_run=True, modality="shape" if task_name == "shape" else "image")
    except UnknownNameError as exc:
        _fail(str(exc), 2)
    except ProtocolError as exc:
        _fail(str(exc), 2)

    _setup_logging(verbose, quiet or as_json)
    from vtbench.report import rich_table, summary_html
    from vtbench.runner import PartialRunError, RunConfig
    from vtbench.runner import run as run_eval
    try:
        cfg = RunConfig(data=data, metrics=metrics.split(",") if metrics else None,
                        protocol=protocol or "reconstruction", annotations=annotations,
                        preprocess=preprocess, resolution=resolution, limit=limit, seed=seed,
                        batch_size=batch_size, device=device, out=out, force=force, seeds=_parse_seeds(seeds),
                        save_reconstructions=save_reconstructions, weights=weights,
                        trust_checkpoint=trust_checkpoint, workers=workers, precision=precision,
                        progress=not (quiet or as_json))
        records = run_eval(names, cfg)
        failed = None
    except typer.Exit:
        raise
    except UnknownNameError as exc:
        _fail(str(exc), 2)
    except PartialRunError as exc:  # the finished tokenizers are reported below, then exit 1
        records, failed = exc.records, str(exc)
    except (FileNotFoundError, ValueError, RuntimeError, MissingExtra) as exc:
        _fail(str(exc))
    except (EOFError, OSError) as exc:  # click would print a bare "Aborted." for an EOFError
        _fail(f"{type(exc).__name__}: {exc or 'unexpected end of a file'} (see the messages above for the file)")
    from vtbench import distributed
    if not distributed.is_main():  # torchrun: rank 0 reports (every rank holds the same records)
        if failed:
            raise typer.Exit(1)
        return
    from vtbench.results import RESULT_FILE, run_dir
    summaries = [_run_summary(r, run_dir(out, r["dataset"], r["tokenizer"]["name"], r["protocol"]["name"])
                              / RESULT_FILE)
                 for r in records]
    page = summary_html(out)
    if as_json:
        obj = summaries[0] if len(summaries) == 1 and not failed else {"runs": summaries}
        if len(summaries) != 1 or failed:
            obj["summary_html"] = str(page)
        if failed:
            obj["failed"] = failed
        typer.echo(json.dumps(obj, indent=2, allow_nan=False))
    else:
        from rich.console import Console
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
            console = Console(width=200)
        if records:
            console.print(rich_table(records))
        typer.echo(f"results: {out}/  summary: {page}", err=True)
    if failed:
        _fail(failed)


def _parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"--seeds {text!r}: expected comma-separated integers such as 0,1,2", 2)
    if not out or len(set(out)) != len(out):
        _fail(f"--seeds {text!r}: give distinct integers such as 0,1,2", 2)
    return out


@app.command()
def fid(
    a: str = typer.Argument(..., help="Image folder or .npz statistics (mu, sigma)."),
    b: str = typer.Argument(..., help="Image folder or .npz statistics (mu, sigma)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device"),
    limit: Optional[int] = typer.Option(None, "--limit"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """FID between two image folders (or a folder and a statistics .npz), rFID's extractor and resizing."""
    _setup_logging(False, as_json)
    from vtbench import distributed
    from vtbench.fid_tool import fid_between
    from vtbench.metrics import MetricUnavailable
    from vtbench.runner import resolve_device
    try:
        dev = distributed.init_from_env(device) or resolve_device(device)  # torchrun: this rank's device, a shard
        res = fid_between(a, b, batch_size=batch_size, device=str(dev), limit=limit, progress=not as_json)
    except MetricUnavailable as exc:
        _fail(exc.reason)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    except (EOFError, OSError) as exc:  # e.g. an empty .npz (click would print a bare "Aborted.")
        _fail(f"cannot read {a} or {b} ({type(exc).__name__}: {exc or 'the file ends early'}); check that each is "
              f"a complete image folder or .npz statistics file (mu, sigma)")
    if not distributed.is_main():  # torchrun: rank 0 reports
        return
    warning = small_n_warning(res.get("n_a"), res.get("n_b"))
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(json.dumps({"metrics": {"fid": _json_safe(res["fid"])},
                               **{k: v for k, v in res.items() if k != "fid"},
                               **({"warning": warning} if warning else {})},
                              indent=2, default=str))
    else:
        typer.echo(f"FID {res['fid']:.4f}  (n_a={res.get('n_a')}, n_b={res.get('n_b')}, "
                   f"extractor={res.get('extractor')})" + ("  [warning: small N, see stderr]" if warning else ""))


def small_n_warning(*counts: Optional[int]) -> Optional[str]:
    """The warning gFID and rFID values carry when fewer images than feature dimensions (2048) entered a
    covariance; None when every known count reaches it."""
    from vtbench.metrics.fid import FULL_RANK_N
    known = [int(n) for n in counts if n is not None]
    if not known or min(known) >= FULL_RANK_N:
        return None
    return (f"FID on {min(known)} < {FULL_RANK_N} images: the covariance is rank-deficient, so the value is biased "
            "high and only comparable at equal N")


RESIZE_HELP = ("Inception input resize: 'clean' (clean-fid, default) or 'adm' (the TF1 bilinear resize of ADM's "
               "evaluator; use it against ADM reference batches' mu/sigma).")


def _resize_mode(value: str) -> str:
    """--resize value -> the extractor's resize mode (exit 2 naming the choices for anything else)."""
    modes = {"clean": "clean", "adm": "tf-bilinear", "tf-bilinear": "tf-bilinear"}
    if value not in modes:
        _fail(f"--resize {value!r}: choose 'clean' (clean-fid) or 'adm' (ADM's TF1 bilinear resize)", 2)
    return modes[value]


@app.command()
def gfid(
    samples: str = typer.Argument(
        ...,
        help="Generated samples: an image folder, an ADM .npz (arr_0 uint8 NHWC) or a token file .npz (codes)."),
    ref: str = typer.Option(
        ..., "--ref",
        help="Reference: an ADM reference batch .npz (mu, sigma[, mu_s, sigma_s][, arr_0]) or a dataset "
             "('embedded/photos', a folder, parquet)."),
    tokenizer: Optional[str] = typer.Option(
        None, "--tokenizer", "-t",
        help="Tokenizer that decodes a token file (overrides the name stored in it)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weights file for --tokenizer."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help=TRUST_HELP),
    name: Optional[str] = typer.Option(
        None, "--name",
        help="Row name in the results (default: the tokenizer, else the samples' file or folder name)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results directory."),
    limit: Optional[int] = typer.Option(
        None, "--limit", "-n",
        help="First N samples (the reference is not limited; see --ref-limit)."),
    ref_limit: Optional[int] = typer.Option(
        None, "--ref-limit",
        help="A seeded N-subset of the reference images (dataset ids, or an npz's arr_0 rows; --seed)."),
    resolution: Optional[int] = typer.Option(
        None, "--resolution",
        help="Dataset references: adm-center-crop size (default: the samples' size when square, else 256)."),
    allow_size_mismatch: bool = typer.Option(
        False, "--allow-size-mismatch",
        help="Score samples and reference images of different sizes anyway (each value then carries a warning)."),
    resize: str = typer.Option("clean", "--resize", help=RESIZE_HELP),
    force: bool = typer.Option(False, "--force", help="Recompute even if a complete result with the same settings "
                               "exists (an interrupted run resumes without it)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """gFID, sFID, Inception Score, precision and recall of generated samples (the ADM evaluation suite)."""
    _use_cards(cards)
    _check_tokenizer(tokenizer)
    resize = _resize_mode(resize)
    _setup_logging(verbose, quiet or as_json)
    from vtbench import distributed
    from vtbench.gfid import gfid_run, result_path
    from vtbench.metrics import MetricUnavailable
    from vtbench.registry import UnknownNameError
    from vtbench.runner import resolve_device
    try:
        dev = distributed.init_from_env(device) or resolve_device(device)  # torchrun: this rank's device
        rec = gfid_run(samples, ref, name=name, out=out, tokenizer=tokenizer, weights=weights, resolution=resolution,
                       limit=limit, ref_limit=ref_limit, seed=seed, batch_size=batch_size,
                       device=str(dev), progress=not (quiet or as_json),
                       trust_checkpoint=trust_checkpoint, allow_size_mismatch=allow_size_mismatch,
                       resize=resize, force=force)
    except UnknownNameError as exc:
        _fail(str(exc), 2)
    except MetricUnavailable as exc:
        _fail(exc.reason)
    except (FileNotFoundError, ValueError, RuntimeError, MissingExtra) as exc:
        _fail(str(exc))
    if not distributed.is_main():  # torchrun: rank 0 reports
        return
    path = result_path(out, rec["dataset"], rec["tokenizer"]["name"], rec["run"]["resize"])
    metrics = rec["metrics"]
    if as_json:
        typer.echo(json.dumps({"name": rec["tokenizer"]["name"], "reference": rec["dataset"]["id"],
                               "n": rec["samples"]["n"], "n_reference": rec["dataset"].get("n_reference"),
                               "protocol": f"{rec['protocol']['name']}@{rec['protocol']['version']}",
                               "metrics": {k: _json_safe(v["value"]) for k, v in metrics.items()},
                               "reasons": {k: v["reason"] for k, v in metrics.items() if v.get("reason")},
                               "warnings": {k: v["extra"]["warning"] for k, v in metrics.items()
                                            if (v.get("extra") or {}).get("warning")},
                               "result": str(path)}, indent=2, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from vtbench.report import fmt
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    table = Table(title=f"vtbench gfid: {rec['tokenizer']['name']} vs {rec['dataset']['id']}",
                  caption=f"{rec['samples']['n']} samples, reference n={rec['dataset'].get('n_reference')}")
    for col, justify in (("metric", "left"), ("value", "right"), ("note", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for v in metrics.values():
        arrow = " ↑" if v["higher_is_better"] else " ↓"
        table.add_row(Text(v["display_name"] + arrow), fmt(v["value"]),
                      Text(v.get("reason") or v["extra"].get("warning", "")))
    console.print(table)
    typer.echo(f"result: {path}", err=True)


_STATUS_STYLE = {"regressed": "bold red", "missing": "bold red", "incomparable": "bold magenta",
                 "improved": "green", "new": "cyan", "info": "dim"}


def _null_reasons(report: Any) -> dict[str, int]:
    """Each distinct reason a compared value is null, numbered once in order of appearance (tables cite ``[k]``)."""
    out: dict[str, int] = {}
    for r in report.rows:
        if r.reason and r.reason not in out:
            out[r.reason] = len(out) + 1
    return out


def _reason_legend(reasons: dict[str, int]):
    from rich.table import Table
    from rich.text import Text
    legend = Table("", "why a value is null (stated once)", box=None, show_edge=False)
    for reason, k in reasons.items():
        legend.add_row(f"[{k}]", Text(reason))
    return legend


def _compare_table(report: Any, reasons: dict[str, int] | None = None):
    from rich.table import Table
    from rich.text import Text

    from vtbench.report import fmt
    reasons = _null_reasons(report) if reasons is None else reasons
    table = Table(title=f"vtbench compare: {report.new} vs baseline {report.baseline}",
                  caption=f"tolerances: {'; '.join(report.tolerance_sources) or 'none'}")
    for col, justify in (("tokenizer", "left"), ("dataset", "left"), ("metric", "left"), ("baseline", "right"),
                         ("new", "right"), ("Δ", "right"), ("allowed", "right"), ("status", "left"), ("note", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in report.rows:
        arrow = " ↑" if r.higher_is_better is True else " ↓" if r.higher_is_better is False else ""
        delta = "" if r.delta is None else "inf" if math.isinf(r.delta) else f"{r.delta:+.4g}"
        note = r.note.replace(r.reason, f"[{reasons[r.reason]}]") if r.reason in reasons else r.note
        cells = [r.tokenizer, r.dataset, (r.metric or "(result)") + arrow, fmt(r.baseline), fmt(r.new), delta,
                 "" if r.tolerance is None else f"{r.tolerance:.4g}", r.status, note]
        style = _STATUS_STYLE.get(r.status) if r.status != "missing" or not report.allow_missing else "cyan"
        table.add_row(*[Text(str(c)) for c in cells], style=style)  # Text: names from files are not markup
    return table


def _compare_summary(report: Any):
    """One row per (tokenizer, dataset): how many metrics ended in each status, and the worst of them."""
    from rich.table import Table
    from rich.text import Text

    from vtbench.compare import STATUSES, describe_failure
    pairs: dict[tuple[str, str], list[Any]] = {}
    for r in report.rows:
        pairs.setdefault((r.tokenizer, r.dataset), []).append(r)
    shown = [s for s in STATUSES if any(r.status == s for r in report.rows)]
    table = Table("tokenizer", "dataset", *shown, "worst", title=f"vtbench compare (summary): {report.new} vs "
                  f"baseline {report.baseline}", caption="--summary off: one row per metric")
    rank = {"incomparable": 0, "regressed": 1, "missing": 2}
    for (tok, ds), rows in pairs.items():
        worst = min(rows, key=lambda r: rank.get(r.status, 9))
        note = describe_failure(worst) if worst.status in rank else ""
        style = _STATUS_STYLE.get(worst.status) if worst.status in rank else None
        table.add_row(Text(tok), Text(ds), *[str(sum(r.status == s for r in rows) or "") for s in shown],
                      Text(note), style=style)
    return table


@app.command()
def compare(
    new: Path = typer.Argument(..., help="New results: a results directory or one result.json."),
    baseline: Path = typer.Argument(..., help="Baseline results: a results directory or one result.json."),
    tolerances: Optional[Path] = typer.Option(
        None, "--tolerances",
        help="TOML tolerances merged over metrics/compare.toml."),
    abs_tol: Optional[list[str]] = typer.Option(None, "--abs", help="METRIC=VALUE absolute tolerance (repeatable)."),
    rel_tol: Optional[list[str]] = typer.Option(
        None, "--rel",
        help="METRIC=VALUE tolerance relative to |baseline| (repeatable)."),
    junit: Optional[Path] = typer.Option(None, "--junit", help="Write JUnit XML here (for CI test reports)."),
    allow_missing: bool = typer.Option(False, "--allow-missing", help="Baseline entries absent from NEW do not fail."),
    summary: bool = typer.Option(False, "--summary", help="One row per (tokenizer, dataset) instead of per metric."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Regression gate: exit 0 if nothing regressed, 1 on a regression, 2 if the inputs cannot be compared."""
    from vtbench.compare import CompareInputError, Report, load_tolerances, parse_overrides
    from vtbench.compare import compare as compare_results
    from vtbench.junit import write_junit
    try:
        tols = load_tolerances(tolerances, parse_overrides(abs_tol, "--abs"), parse_overrides(rel_tol, "--rel"))
        report = compare_results(new, baseline, tols, allow_missing=allow_missing)
    except CompareInputError as exc:
        report = Report(new=str(new), baseline=str(baseline), problems=[str(exc)], allow_missing=allow_missing)
    if junit:
        write_junit(report, junit)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        from rich.console import Console
        console = Console()
        if not console.is_terminal:
            console = Console(width=200)
        if report.rows:
            reasons = _null_reasons(report)
            console.print(_compare_summary(report) if summary else _compare_table(report, reasons))
            if reasons:
                console.print(_reason_legend(reasons))
        typer.echo(report.verdict)
    raise typer.Exit(report.exit_code)


@ls_app.command("tokenizers")
def ls_tokenizers(pattern: Optional[str] = typer.Argument(None), as_json: bool = typer.Option(False, "--json"),
                  long: bool = typer.Option(False, "--long", "-l", help="Add each card's description."),
                  settings: bool = typer.Option(False, "--settings",
                                                help="List every setting of a rate sweep (default: one row per sweep "
                                                     "with a count)."),
                  task: str = typer.Option("image", "--task",
                                           help="image (default) or shape: which track's tokenizers to list."),
                  cards_opt: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP)) -> None:
    """Declared tokenizer variants (tokenizers/*.toml, plus --cards, $VTBENCH_CARDS and plugins)."""
    _use_cards(cards_opt)
    from vtbench.config import all_cards
    from vtbench.tokenizers import list_tokenizers
    from vtbench.tokenizers.weights import local_weights
    cards = all_cards()
    if task not in ("image", "shape"):
        _fail(f"--task {task!r}: expected image or shape", 2)
    names = list_tokenizers(pattern, modality=task)
    other = len(list_tokenizers(pattern, modality="shape" if task == "image" else "image"))
    found = {n: local_weights(cards[n].weights) for n in names}
    if as_json:
        typer.echo(json.dumps([{"name": n, "kind": cards[n].kind, "default_run": cards[n].default_run,
                                "weights_file": (cards[n].weights or {}).get("file"),
                                "weights_local": str(found[n]) if found[n] else None,
                                "description": cards[n].description, "card_path": cards[n].card_path}
                               for n in names], indent=2))
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    # a sweep's settings fold into their group's row (when the group is listed too), unless --settings
    groups = {n: cards[n].sweep_settings for n in names if cards[n].sweep_settings}
    folded = set() if settings else {s for g, ss in groups.items() for s in ss if s != g}
    console = Console()
    t = Table("tokenizer", "kind", "default", "weights", "sweep", *(["weights file", "description"] if long else []),
              box=box.SIMPLE_HEAD, caption_justify="left",
              caption=f"{len(names)} {task} tokenizers" + (f" ({len(folded)} sweep settings folded; --settings)"
                                                         if folded else "")
              + ("" if long else "; --long: descriptions")
              + (f"; {other} {'shape' if task == 'image' else 'image'} tokenizers: --task "
                 f"{'shape' if task == 'image' else 'image'}" if other else ""))
    t.columns[0].no_wrap = True
    for n in names:
        if n in folded:
            continue
        c = cards[n]
        sw = c.sweep or {}
        if n in groups and not settings:
            vals = sw.get("values") or []
            sweep = f"{len(vals)}: {sw.get('label', '')}{min(vals)}..{max(vals)}" if vals else ""
        elif "group" in sw:
            sweep = f"of {sw['group']}"
        else:
            sweep = ""
        w = Text("-") if not c.weights else Text("found", style="green") if found[n] else Text("missing",
                                                                                              style="yellow")
        row = [Text(n), c.kind, "yes" if c.default_run else "", w, Text(sweep)]
        if long:
            row += [Text(str(found[n]) if found[n] else (c.weights or {}).get("file") or
                         (c.weights or {}).get("hub_repo", "")), Text(c.description)]
        t.add_row(*row)
    console.print(t)


@ls_app.command("metrics")
def ls_metrics() -> None:
    """Metrics and the values each produces."""
    from vtbench.metrics import METRICS
    for name in METRICS.names():
        cls = METRICS.get(name)
        outs = ", ".join(f"{o.key}{' ↑' if o.higher_is_better else ' ↓' if o.higher_is_better is False else ''}"
                         for o in cls.outputs)
        typer.echo(f"{name:12s} {outs}")


@ls_app.command("protocols")
def ls_protocols() -> None:
    from vtbench.config import list_protocols, load_protocol
    for p in list_protocols():
        proto = load_protocol(p)
        typer.echo(f"{proto.name}@{proto.version}  task={proto.task}  {proto.description}".rstrip())


@ls_app.command("policies")
def ls_policies() -> None:
    from vtbench.data.policies import POLICIES
    for p in POLICIES:
        typer.echo(p)


@app.command()
def info(name: str, as_json: bool = typer.Option(False, "--json"),
         cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP)) -> None:
    """Show a tokenizer's card: what it is, its parameters, its published numbers and where its weights are."""
    _use_cards(cards)
    _check_tokenizer(name)
    from vtbench.config import get_card
    from vtbench.tokenizers.weights import weights_search
    card = get_card(name)
    d = card.to_dict()
    search = weights_search(card.weights)
    if as_json:
        typer.echo(json.dumps({**d, "weights_search": search}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)

    def text(v: Any) -> Text:  # card strings are data, never rich markup
        return Text(v if isinstance(v, str) else json.dumps(v, default=str))

    head = Table(show_header=False, title=Text(card.name), title_justify="left", box=None)
    head.add_column(style="bold", no_wrap=True)
    head.add_column()
    for k in ("kind", "description", "source", "license", "native_size", "size_multiple", "input_range",
              "reference", "default_run", "card_path"):
        if d.get(k) not in (None, "", [], {}):
            head.add_row(k, text(d[k]))
    if card.sweep:
        sw = card.sweep
        head.add_row("sweep", text(f"setting {sw['value']} of {sw['group']} ({sw['param']})" if "group" in sw
                                   else f"{sw.get('param')} = {sw.get('values')} ({len(card.sweep_settings)} "
                                        f"settings: {', '.join(card.sweep_settings[:3])} ...)"))
    console.print(head)
    if card.params:
        t = Table("parameter", "value", title="parameters", title_justify="left")
        for k, v in card.params.items():
            t.add_row(Text(str(k)), text(v))
        console.print(t)
    if card.official_preprocessing:
        t = Table("key", "value", title="official preprocessing", title_justify="left")
        for k, v in card.official_preprocessing.items():
            t.add_row(Text(str(k)), text(v))
        console.print(t)
    if card.published:
        t = Table("metric", "value", "dataset", "res", "tol", "calibrated", "source / protocol",
                  title="published numbers (as reported by the authors)", title_justify="left")
        for p in card.published:
            note = str(p.get("source", "")) + (f"; protocol: {p['protocol']}" if p.get("protocol") else "")
            metric = str(p.get("metric")) + (f" @{p['setting']}" if "setting" in p else "")
            t.add_row(Text(metric), text(p.get("value")), Text(str(p.get("dataset", ""))),
                      text(p.get("resolution", "")), text(p.get("tolerance", "")),
                      "yes" if p.get("calibrate") else "", Text(note))
        console.print(t)
    else:
        console.print("published numbers: none on this card")
    if card.weights:
        w = card.weights
        t = Table(show_header=False, title="weights", title_justify="left", box=None)
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        for k in ("file", "sha256", "size_bytes", "url", "hub_repo", "gated"):
            if w.get(k) not in (None, ""):
                t.add_row(k, text(w[k]))
        console.print(t)
        t = Table("looked in (in this order)", "path", "found")
        for place in search:
            found = "" if place["found"] is None else "yes" if place["found"] else "no"
            t.add_row(Text(place["place"]), Text(place["path"] or "(pass a file)"), found)
        console.print(t)
    else:
        console.print("weights: none needed")


@app.command("train-tiny", add_help_option=False,
             context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train_tiny(ctx: typer.Context) -> None:
    """Train one of the tiny learned tokenizers (arguments: see `vtbench train-tiny --help`)."""
    from vtbench.tokenizers.tiny_train import main
    sys.exit(main(list(ctx.args)))


data_app = typer.Typer(help="Dataset helpers (annotation conversion).")
app.add_typer(data_app, name="data")


@data_app.command("convert-tokbench")
def data_convert_tokbench(
    src: Path = typer.Argument(..., help="TokBench text annotation JSON (list of {file_name, annotations})."),
    out: Path = typer.Option(
        ..., "--out", "-o",
        help="Word manifest to write (JSONL); put it next to the images as words.jsonl."),
) -> None:
    """Convert TokBench's text annotations into vtbench's word manifest (keeps TokBench's size ratios)."""
    from vtbench.data.annotations import AnnotationError, convert_tokbench
    try:
        stats = convert_tokbench(src, out)
    except AnnotationError as exc:
        _fail(str(exc))
    typer.echo(f"{out}: {stats['images']} images, {stats['words']} words ({stats['polygons']} from polygons)")


weights_app = typer.Typer(help="Checkpoint helpers (convert a trusted pickle to safetensors once).")
app.add_typer(weights_app, name="weights")


@weights_app.command("convert")
def weights_convert(
    src: Path = typer.Argument(..., help="Checkpoint to convert (.pt, .pth, .ckpt, .bin)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="safetensors file to write (default: beside SRC, "
                                       "<stem>.safetensors, where $VTBENCH_WEIGHTS and --weights DIR find it first)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help="Unpickle SRC with its own code (runs "
                                          "arbitrary code: only for a file whose origin you trust)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Write every tensor of a checkpoint to safetensors, so a file trusted once loads safely from then on.

    Without --trust-checkpoint the file is read weights-only or by the inert reader (nothing in it runs)."""
    from vtbench.tokenizers.weights import UntrustedCheckpointError, WeightsMismatchError, convert_to_safetensors
    dst = out or src.with_name(src.stem + ".safetensors")
    if not src.is_file():
        _fail(f"{src}: no such file", 2)
    try:
        summary = convert_to_safetensors(src, dst, trust=trust_checkpoint)
    except (UntrustedCheckpointError, WeightsMismatchError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"{dst}: {summary['tensors']} tensors ({summary['skipped_non_tensor']} non-tensor entries not "
                   f"carried), read {summary['load_mode']}; source sha256 {summary['source_sha256']}")


leaderboard_app = typer.Typer(help="The static leaderboard site built from result records.")
app.add_typer(leaderboard_app, name="leaderboard")


@leaderboard_app.command("build")
def leaderboard_build(
    results: Optional[list[Path]] = typer.Argument(
        None, help="Result folders (searched for result.json) or result files. Default: the published store, "
                   "leaderboard/store."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o",
        help="Site folder (created; an earlier build is replaced once the new one is complete). Default: "
             "leaderboard/site when building the store, else site."),
    cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Build a self-contained static site (index.html + assets, opens from disk) and print index.html's path.

    Measured rows come from the records; every registered card's published numbers appear beside them as the
    'reported by the authors' layer."""
    _use_cards(cards)
    _setup_logging(verbose, not verbose)
    from vtbench.leaderboard import build_site
    from vtbench.leaderboard.store import SITE_DIR, STORE_DIR
    if not results:
        if not STORE_DIR.is_dir():
            _fail(f"{STORE_DIR}: no results store here; run from the repository root (which holds "
                  "leaderboard/store/) or name result folders: vtbench leaderboard build results/", 2)
        results, out = [STORE_DIR], out or SITE_DIR
    try:
        index = build_site(results, out or Path("site"))
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    typer.echo(str(index))


@leaderboard_app.command("add")
def leaderboard_add(
    results: list[Path] = typer.Argument(..., help="result.json files, or folders searched for them."),
    store: Path = typer.Option(Path("leaderboard/store"), "--store", help="The results store."),
    replace: bool = typer.Option(
        False, "--replace",
        help="Replace stored records of the same tokenizer, dataset, protocol and settings that share a metric "
             "(or have other weights) with a new one."),
    cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP),
) -> None:
    """Check result records and copy them into the published store (all or nothing).

    Checked: schema version; protocol name, version and settings hash equal to the current protocol's; dataset
    identity; provenance (vtbench version, timestamps, environment, run fingerprint, weights sha256 where the card
    has weights); weights sha256 equal to the card's where it pins one; finite metric values; no duplicate of a
    stored (tokenizer, dataset, protocol, settings) sharing a metric unless --replace. A record that adds other
    metrics of a stored measurement is kept beside it; the site merges them. Each refusal names the file and why."""
    _use_cards(cards)
    from vtbench.leaderboard.store import StoreRefused, add
    try:
        done = add(results, store, replace=replace)
    except StoreRefused as exc:
        for r in exc.refusals:
            typer.echo(f"error: {r}", err=True)
        _fail(f"{len(exc.refusals)} record(s) refused; nothing was added to {store}")
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
    for p in done.added:
        typer.echo(f"added {p}")
    for p in done.removed:
        if p not in done.added:
            typer.echo(f"replaced {p}")
    for p in dict.fromkeys(done.kept_beside):
        typer.echo(f"kept beside (other metrics of the same measurement; merged on the site): {p}")


@app.command()
def probe(
    tokenizer: str = typer.Argument(..., help="family.variant of a tokenizer with integer codes."),
    data: Optional[str] = typer.Option(
        None, "--data", "-d",
        help="Training data (class subfolders give labels). Default: the protocol's (embedded/photos)."),
    size: Optional[str] = typer.Option(
        None, "--size",
        help="Prior size from metrics/probe.toml: tiny (CPU smoke test, the default), S, B (LlamaGen GPT-B, "
             "GigaTok's protocol)."),
    val_data: Optional[str] = typer.Option(
        None, "--val-data",
        help="Validation dataset for the cross-entropy (default: a seeded 10% split of --data by id hash)."),
    reference: Optional[str] = typer.Option(
        None, "--reference",
        help="gFID reference: a dataset or a reference .npz (e.g. VIRTUAL_imagenet256_labeled.npz). Default: --data."),
    resize: str = typer.Option("clean", "--resize", help=RESIZE_HELP),
    resolution: Optional[int] = typer.Option(
        None, "--resolution",
        help="Image size (default: the tokenizer's native size, else the size's / protocol's)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Deterministic subset of N images of --data."),
    steps: Optional[int] = typer.Option(
        None, "--steps",
        help="Training steps (overrides the size's budget; recorded, changes the fingerprint)."),
    epochs: Optional[float] = typer.Option(
        None, "--epochs",
        help="Training epochs (overrides the size's budget; recorded, changes the fingerprint)."),
    cfg_scale: Optional[float] = typer.Option(
        None, "--cfg-scale",
        help="Fixed classifier-free guidance scale (no search)."),
    cfg_search: Optional[bool] = typer.Option(
        None, "--cfg-search/--no-cfg-search",
        help="Search the CFG scale in 0.25 steps (GigaTok); default: the size's setting."),
    samples_per_class: Optional[int] = typer.Option(
        None, "--samples-per-class",
        help="Samples per class (default: the size's; 50 at B)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Tokenizer weights file."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint",
        help=TRUST_HELP),
    out: Path = typer.Option(
        Path("results"), "--out", "-o",
        help="Results directory (run in <out>/<dataset>/<tokenizer>/probe-<size>/)."),
    device: str = typer.Option(
        "auto", "--device",
        help="auto, cpu, cuda, cuda:1 ... (under torchrun: each rank's LOCAL_RANK GPU)."),
    seed: int = typer.Option(0, "--seed"),
    force: bool = typer.Option(
        False, "--force",
        help="Train from scratch (drops the checkpoint and result; keeps the token cache)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    cards: Optional[list[Path]] = typer.Option(None, "--cards", help=CARDS_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """AR probe (gFID tier B): train a fixed class-conditional GPT on the tokenizer's codes, sample, decode, score.

    Multi-GPU: torchrun --nproc_per_node=8 -m vtbench.cli probe TOKENIZER --size B ..."""
    _use_cards(cards)
    _check_tokenizer(tokenizer)
    resize = _resize_mode(resize)
    _setup_logging(verbose, quiet or as_json)
    from vtbench.metrics import MetricUnavailable
    from vtbench.probe import CheckpointMismatch, ProbeConfig, run_probe
    from vtbench.registry import UnknownNameError
    cfg = ProbeConfig(tokenizer=tokenizer, data=data, size=size, val_data=val_data, reference=reference,
                      resize=resize, resolution=resolution, limit=limit, seed=seed, steps=steps, epochs=epochs,
                      cfg_scale=cfg_scale, cfg_search=cfg_search, samples_per_class=samples_per_class, weights=weights,
                      trust_checkpoint=trust_checkpoint, device=device, out=out, force=force,
                      progress=not (quiet or as_json))
    try:
        record = run_probe(cfg)
    except UnknownNameError as exc:
        _fail(str(exc), 2)
    except MetricUnavailable as exc:
        _fail(exc.reason)
    except (FileNotFoundError, ValueError, CheckpointMismatch, RuntimeError, MissingExtra) as exc:
        _fail(str(exc))
    except (EOFError, OSError) as exc:  # click would print a bare "Aborted." for an EOFError
        _fail(f"{type(exc).__name__}: {exc or 'unexpected end of a file'} (see the messages above for the file)")
    if record is None:  # a torchrun rank other than 0
        return
    from vtbench.gfid import metric_key
    from vtbench.probe.run import result_dir
    from vtbench.results import RESULT_FILE, run_dir
    path = result_dir(run_dir(out, record["dataset"], record["tokenizer"]["name"], f"probe-{record['run']['size']}"),
                      cfg.resize) / RESULT_FILE
    summary = {**_run_summary(record, path), "size": record["run"]["size"], "steps": record["probe"]["train"]["steps"],
               "cfg_scale": record["probe"]["sampling"]["cfg_scale"],
               "n_samples": record["metrics"][metric_key("gfid", cfg.resize)]["n"]}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, allow_nan=False))
    else:
        for k, v in summary["metrics"].items():
            typer.echo(f"{k:16s} {'n/a (' + summary['reasons'].get(k, '') + ')' if v is None else f'{v:.4f}'}")
        typer.echo(f"result: {path}", err=True)


@app.command("train-vat")
def train_vat_cmd(
    out_dir: Path = typer.Argument(..., help="Folder for checkpoint.pt, vat.safetensors and summary.json."),
    shapes: str = typer.Option("embedded", "--shapes",
                               help="Training shapes (open_shapes spec: 'embedded', a folder or a file); "
                                    "'none' for the procedural family alone."),
    steps: int = typer.Option(2000, "--steps"),
    seed: int = typer.Option(0, "--seed"),
    batch_size: int = typer.Option(8, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    procedural: float = typer.Option(0.25, "--procedural", help="Probability that a batch slot is a procedural shape."),
    config: Optional[Path] = typer.Option(None, "--config", help="JSON file of VATConfig fields (architecture)."),
    checkpoint_every: int = typer.Option(100, "--checkpoint-every"),
    stop_after: Optional[int] = typer.Option(None, "--stop-after", help="Stop once this many steps are done."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT_DIR/checkpoint.pt."),
    threads: int = typer.Option(1, "--threads", help="torch threads (results reproduce for a fixed count)."),
) -> None:
    """Train a VAT 3D shape tokenizer (vtbench.three_d.vat_train): resumable, seeded; summary JSON on stdout."""
    cfg = None
    if config is not None:
        try:
            cfg = json.loads(config.read_text())
        except (OSError, ValueError) as exc:
            _fail(f"--config {config}: cannot read a JSON object of VATConfig fields ({exc})", 2)
    from vtbench.three_d.vat_train import train_vat
    command = "vtbench train-vat " + " ".join(sys.argv[2:])
    try:
        from vtbench.extras import require
        require("trimesh", "3d", "vtbench train-vat")
        summary = train_vat(out_dir, None if shapes == "none" else shapes, steps, seed, config=cfg,
                            batch_size=batch_size, lr=lr, procedural=procedural, checkpoint_every=checkpoint_every,
                            stop_after=stop_after, resume=resume, threads=threads, command=command)
    except (ValueError, MissingExtra) as exc:
        _fail(str(exc), 2)
    typer.echo(json.dumps(summary, indent=2, sort_keys=True))


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
