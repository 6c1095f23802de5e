"""Command line: ``edgecl run | compare | report``. Thin: parsing and printing only."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from edgecl.errors import EdgeclError, one_line
from edgecl.malloc import arenas_from_env, limit_arenas

with contextlib.suppress(ValueError):  # a bad EDGECL_MALLOC_ARENAS: _process_settings
    limit_arenas(arenas_from_env())  # before torch's import starts a thread (edgecl/malloc.py)

app = typer.Typer(
    help="Resource-efficient continual learning on edge devices: accuracy and cost, side by side.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _process_settings() -> None:
    """Resource-efficient continual learning on edge devices: accuracy and cost, side by side."""
    try:
        arenas_from_env()
    except ValueError as err:
        _fail(err)


def _fail(message: object) -> NoReturn:
    """One line on stderr, exit status 2: how every failure a user can cause ends."""
    typer.echo(f"error: {one_line(message)}", err=True)
    raise typer.Exit(2)


def _with_data_root(overrides: list[str] | None, data_root: Path | None) -> list[str]:
    """``--set`` values are YAML: quote the path so ``#``, ``: `` or ``[`` stay in it."""
    items = list(overrides or [])
    if data_root is not None:
        items.append(f"data.root={json.dumps(str(data_root))}")
    return items


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Typed edgecl errors and OS errors (a missing file, a full disk) end as one line."""
    try:
        yield
    except (EdgeclError, OSError) as exc:
        _fail(exc)


@app.command()
def run(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default runs/<name>)")] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue the run in this directory")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Train the configured methods through the stream and print the comparison table.

    With no arguments: the embedded quick comparison on Split CIFAR-100 with ViT-Ti.
    """
    from edgecl.config import load_config

    overrides = _with_data_root(set_, data_root)
    if resume is not None:
        saved = resume / "config.yaml"
        if not saved.is_file():
            _fail(f"{resume} has no config.yaml: not an edgecl run directory")
        config = saved
    with _user_errors():
        cfg = load_config(config, overrides)
        from edgecl.report import compare_markdown, write_compare, write_report
        from edgecl.runner import run as run_all

        out_dir = resume or out or Path("runs") / cfg.name
        with _progress(quiet) as factory:
            results = run_all(cfg, out_dir, resume=resume is not None, progress_factory=factory)
        for res in results:
            write_report(out_dir / res.run_name)
        if len(results) > 1:
            write_compare([out_dir / r.run_name for r in results], out_dir)
    print(compare_markdown(results))
    console.print(f"results in {out_dir}/ (results.json and report.html per method)")


class _progress:
    """Rich progress bars with ETA, one per method; disabled by --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = Progress(
            TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
        )

    def __enter__(self):
        if self.quiet:
            return None
        self.bar.start()

        def factory(name: str, total: int):
            task = self.bar.add_task(name, total=total)
            return lambda desc, advance: self.bar.update(task, description=desc, advance=advance)

        return factory

    def __exit__(self, *exc) -> None:
        if not self.quiet:
            self.bar.stop()


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories (results.json)")],
    out: Annotated[Path | None, typer.Option(help="write compare.md/.html here")] = None,
) -> None:
    """One table over runs: accuracy, forgetting, FLOPs, memory, time, energy, ratios."""
    from edgecl.report import compare_markdown, load_results, write_compare

    with _user_errors():
        results = [load_results(d) for d in run_dirs]
        print(compare_markdown(results))
        if out is not None:
            write_compare(run_dirs, out)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Write report.md and a self-contained report.html (plots embedded) for one run."""
    from edgecl.report import write_report

    with _user_errors():
        md, html = write_report(run_dir)
    print(f"{md}\n{html}")


@app.command("analyze-layers")
def analyze_layers(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="where analysis.json/.png go")] = Path(
        "runs/analyze-layers"),
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="training steps per task (default: the config's epochs)")
    ] = None,
    samples: Annotated[int, typer.Option(help="held-out images per task for CKA")] = 64,
    threshold: Annotated[float, typer.Option(help="MS and LP threshold for freezing")] = 0.9,
    raw_tokens: Annotated[
        bool, typer.Option("--raw-tokens", help="ViT: CKA on raw tokens (not per-token normed)")
    ] = False,
) -> None:
    """Per-layer memory stability and learning plasticity (linear CKA) on the config's first
    two tasks; prints and plots them and proposes LightCL's freeze point."""
    from edgecl.analysis import analyze_layers as run_analysis
    from edgecl.analysis import write_analysis
    from edgecl.config import load_config

    overrides = _with_data_root(set_, data_root)
    with _user_errors():
        cfg = load_config(config, overrides)
        result = run_analysis(cfg, steps=steps, samples=samples, threshold=threshold,
                              normalize_tokens=not raw_tokens)
        json_path, png_path = write_analysis(result, out)
    print(result.table())
    console.print(f"wrote {json_path} and {png_path}")


# ---- the learner service: ``edgecl learn`` and its HTTP clients ``edgecl learner ...`` ----
learner_app = typer.Typer(
    help="Talk to a running learner (`edgecl learn`) over its HTTP API; prints JSON.",
    no_args_is_help=True,
)
app.add_typer(learner_app, name="learner")
_URL = typer.Option("--url", help="the learner's address", envvar="EDGECL_URL")
_TOKEN = typer.Option("--token", help="the learner's token (or $EDGECL_TOKEN)",
                      envvar="EDGECL_TOKEN", show_envvar=False)


@app.command()
def learn(
    state: Annotated[Path, typer.Option("--state", help="the learner's state directory")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML learner config")] = None,
    host: Annotated[str, typer.Option(help="address to bind (not loopback: needs a token)")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 8000,
    token: Annotated[str | None, _TOKEN] = None,
) -> None:
    """Start a long-running learner: HTTP API v1 and a status page (docs/learner.md).

    Serves http://HOST:PORT/ until Ctrl-C or SIGTERM, then writes a final checkpoint."""
    from edgecl.service.server import serve

    with _user_errors():
        serve(state, config, host, port, token,
              announce=lambda url: console.print(f"edgecl learner on {url} (state {state})"))


def _print_json(body: object) -> None:
    print(json.dumps(body, indent=2))


@learner_app.command("add")
def learner_add(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files")],
    label: Annotated[list[str], typer.Option("--label", "-l",
                                             help="class name: one for all, or one per image")],
    key: Annotated[list[str] | None, typer.Option(
        "--key", help="idempotency key per image: a retry never stores a sample twice")] = None,
    url: Annotated[str, _URL] = "http://127.0.0.1:8000",
    token: Annotated[str | None, _TOKEN] = None,
) -> None:
    """Send labelled samples; prints {"accepted", "ids"} once they are durably stored."""
    from edgecl.service.client import Client, pair_labels

    with _user_errors():
        _print_json(Client(url, token).add(images, pair_labels(images, label), key))


@learner_app.command("predict")
def learner_predict(
    images: Annotated[list[Path], typer.Argument(help="PNG or JPEG files")],
    top: Annotated[int | None, typer.Option(help="ranked classes per image")] = None,
    url: Annotated[str, _URL] = "http://127.0.0.1:8000",
    token: Annotated[str | None, _TOKEN] = None,
) -> None:
    """Classify images with the current model; prints predictions and the model version."""
    from edgecl.service.client import Client

    with _user_errors():
        _print_json(Client(url, token).predict(images, top))


def _learner_call(name: str, summary: str) -> None:
    """A ``edgecl learner NAME`` command: one request without arguments, its JSON printed."""

    def command(
        url: Annotated[str, _URL] = "http://127.0.0.1:8000",
        token: Annotated[str | None, _TOKEN] = None,
    ) -> None:
        from edgecl.service.client import Client

        with _user_errors():
            _print_json(getattr(Client(url, token), name)())

    command.__doc__ = summary
    learner_app.command(name)(command)


_learner_call("status", "Print the learner's status (samples, classes, model version, memory).")
_learner_call("checkpoint", "Make the learner write a checkpoint now.")
_learner_call("export", "Make the learner write an ONNX model of its current snapshot; prints "
              "its path.")


@app.command("plan")
def plan_devices(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    device: Annotated[
        list[str] | None,
        typer.Option("--device", "-d", help="device profile, 'host' or 'all' (default: all)"),
    ] = None,
    method: Annotated[
        str | None, typer.Option(help="method label (default: the config's first)")] = None,
    budget_mib: Annotated[
        float | None, typer.Option("--budget-mib", help="memory budget for the peak RSS, MiB")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
) -> None:
    """Predict training memory, step time and energy per sample on named devices, from a few
    real training steps measured on this host; say which knob values fit when it does not."""
    from edgecl.config import load_config
    from edgecl.planner.report import plan_report, resolve_devices

    overrides = _with_data_root(set_, data_root)
    with _user_errors():
        cfg = load_config(config, overrides)
        devices = resolve_devices(device or ["all"])
        console.print("measuring a few training steps on this host ...")
        text = plan_report(cfg, devices, method, budget_mib)
    print(text)


@app.command()
def sweep(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML sweep file")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (default sweeps/<name>)")
                   ] = None,
    address: Annotated[str | None, typer.Option(
        help="join this Ray cluster (ray start --head); default: a local Ray instance")] = None,
    num_cpus: Annotated[int | None, typer.Option(
        "--num-cpus", help="CPUs of the local Ray instance (default: all)")] = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", help="continue the sweep in this directory (its unfinished trials)")] = None,
    retry_errored: Annotated[bool, typer.Option(
        "--retry-errored", help="with --resume: run the failed trials again too")] = False,
    report_dir: Annotated[Path | None, typer.Option(
        "--report", help="rebuild sweep.json/.md/.html of this sweep directory, run nothing")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no Ray Tune status")] = False,
) -> None:
    """Run a sweep on Ray Tune: seeds × methods × config fields, sampled axes too
    (docs/sweep.md); each trial an ordinary run directory, aggregated in sweep.md/.html."""
    from edgecl.sweep import load_sweep, report, resume_sweep, run_sweep

    given = [name for name, value in (("-c", config), ("--resume", resume),
                                      ("--report", report_dir)) if value is not None]
    if len(given) != 1:
        _fail(f"sweep takes one of -c SWEEP.yaml, --resume DIR or --report DIR, got "
              f"{', '.join(given) or 'none'}")
    if config is None and (set_ or out or data_root):
        _fail("--set, --out and --data-root go with -c: a resumed or reported sweep keeps the "
              "sweep.yaml of its directory")
    with _user_errors():
        if report_dir is not None:
            data, where = report(report_dir), report_dir
        elif resume is not None:
            data, where = resume_sweep(resume, address=address, num_cpus=num_cpus,
                                       retry_errored=retry_errored, verbose=0 if quiet else 1
                                       ), resume
        else:
            spec = load_sweep(config, _with_data_root(set_, data_root))
            where = out or Path("sweeps") / spec.name
            data = run_sweep(spec, where, address=address, num_cpus=num_cpus,
                             verbose=0 if quiet else 1)
    counts = data["counts"]
    for label, best in data["best"].items():
        print(f"best {label}: {best['configuration']} ({data['metric']} {best['mean']:.4g}, "
              f"{best['n']} seeds)")
    console.print(f"{counts['completed']} trials completed, {counts['failed']} failed, "
                  f"{counts['running']} unfinished; sweep.md and sweep.html in {where}/")


# ---- CsKO's tools: pretrain a CNN on base classes, probe kernel-element knowledge ----------
@app.command()
def pretrain(
    out: Annotated[Path, typer.Option("--out", help="the weights file to write (.pth)")],
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
) -> None:
    """Train the config's CNN backbone on its first task (the base classes, e.g.
    data.first_task_classes=50) and save weights that backbone.weights=FILE loads."""
    from edgecl.config import load_config
    from edgecl.runner.pretrain import pretrain as run_pretrain

    with _user_errors():
        cfg = load_config(config, _with_data_root(set_, data_root))
        summary = run_pretrain(cfg, out)
    print(json.dumps(summary, indent=1))


@app.command("analyze-kernels")
def analyze_kernels(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override: key=value (dotted path, YAML value)"),
    ] = None,
    out: Annotated[Path, typer.Option(help="where kernel_probe.json goes")] = Path(
        "runs/analyze-kernels"),
    block: Annotated[
        list[str] | None, typer.Option("--block", help="a residual block to probe (repeat)")
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option("--data-root", help="dataset/weights root (or $EDGECL_DATA)")
    ] = None,
) -> None:
    """Knowledge intensity of kernel elements per depth: learn the config's first task
    training only the 3x3 centers, one off-center tap, or whole kernels of one block."""
    from edgecl.config import load_config
    from edgecl.runner.kernel_probe import analyze_kernels as run_probe
    from edgecl.runner.kernel_probe import write_probe

    with _user_errors():
        cfg = load_config(config, _with_data_root(set_, data_root))
        probe = run_probe(cfg, block)
        path = write_probe(probe, out)
    print(probe.table())
    console.print(f"wrote {path}")


if __name__ == "__main__":
    app()
