"""Markdown report of one or more run folders: figures plus each run's summary table.

``write_report(run_dirs, out_dir)`` reads every folder first (``RunError`` before
anything is written), then writes the PNG figures and ``report.md`` into ``out_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedprune.analysis.figures import FIGURES
from fedprune.analysis.runs import Run, load_runs
from fedprune.analysis.table import _cell, table_columns

REPORT_NAME = "report.md"
CONFIG_KEYS = ("dataset", "model", "partitioner", "num_clients", "rounds", "final_sparsity",
               "fraction_train", "fraction_evaluate", "evaluate_every", "seed")

EXPLANATIONS = {
    "accuracy_vs_round.png": (
        "Personal accuracy per round",
        "Each client's personal model is scored on its own test split, two ways. **Solid, received**: "
        "the personal model as the client holds it when the round's model arrives (after what the "
        "method does at evaluation: `fedavg-ft` fine-tunes, `mi-post` prunes and refits). **Dashed, "
        "trained**: its model right after its local training in that round. Comparing methods, use "
        "one kind of line: `local` is the same model either way. A point is the **plain mean over the "
        "clients measured in that round** (every client counts once); the last round's points equal "
        "*received mean* and *trained mean* in the table. Only rounds with an evaluation "
        "(`evaluate_every`) have points. Higher is better."),
    "mask_diagnostics.png": (
        "How personal the masks are",
        "Left: the mean Jaccard overlap |A and B| / |A or B| between every two clients' masks (weight "
        "matrices only; two independent random masks keeping 20% overlap by about 0.11). Right: the "
        "fraction of each client's kept weights that the *initial* model's own magnitude mask, keeping "
        "as many, also keeps (a random mask scores about its kept fraction). High values on both "
        "mean the masks were chosen before training taught the model anything: they are the initial "
        "weights' masks, the same on every client. Dense methods have no line."),
    "accuracy_vs_mb.png": (
        "Received personal accuracy versus communication",
        "The same mean (received) personal accuracy, plotted against the cumulative traffic of that "
        "method: bytes "
        "up plus down of all its train and evaluate messages in rounds 1..r (the evaluate messages of "
        "round r included), in MB = 10^6 bytes. The last point's x equals *MB up* + *MB down* in the "
        "table. Curves further up and to the left reach an accuracy with less traffic. Methods that "
        "send nothing (`local`) sit at 0 MB."),
    "accuracy_distribution.png": (
        "Received personal accuracy across clients",
        "Per method, the received personal accuracy of every client at the method's last evaluated round: "
        "the box spans the quartiles with the median as a black line (whiskers: 1.5 IQR), and "
        "each dot is one client (spread sideways only for visibility). A low box or isolated low "
        "dots mean some clients are served badly even if the mean looks good."),
    "speedup_vs_sparsity.png": (
        "Measured speedup versus sparsity",
        "One point per client and run (all runs pooled per method, one colour per method): the "
        "x-axis is the client's last reported sparsity, the y-axis (log scale) the measured speedup "
        "of its personal model = dense latency / personal latency (median, batch 32, one thread, "
        "from the `device` records). The curve 1/(1 - s) is the ideal speedup if time were "
        "proportional to the weights kept; hollow marks are each model's FLOP limit (dense FLOPs / "
        "personal FLOPs). Unstructured masks run dense with zeros and stay near 1x (dotted line); "
        "structured (squeezed) models can approach the limits."),
}


def _fmt_config_value(value: object) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def markdown_table(rows: Sequence[dict]) -> str:
    """Markdown table of summary rows, with the columns and formats of ``fedprune.analysis.table``."""
    columns = table_columns(rows)
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |",
             "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for _, key, fmt in columns) + " |")
    return "\n".join(lines)


def _run_section(run: Run) -> list[str]:
    lines = [f"### {run.label}", "", f"Run folder: `{run.path.resolve()}`", ""]
    settings = [f"{key} = {_fmt_config_value(run.config[key])}" for key in CONFIG_KEYS if key in run.config]
    if settings:
        lines += ["Settings: " + "; ".join(settings) + ".", ""]
    lines += [markdown_table(run.summary), ""]
    return lines


def render_markdown(runs: Sequence[Run], figures: Sequence[str]) -> str:
    """The text of ``report.md``; ``figures`` are file names relative to the report."""
    several = len(runs) > 1
    lines = ["# fedprune report", ""]
    lines += ["Runs: " + ", ".join(f"`{run.label}`" for run in runs) + ".", ""]
    if several:
        lines += ["Lines are labelled `method [run folder]`; the speedup figure pools all runs per method.", ""]
    lines += ["Accuracies are fractions (0-1) of correctly classified test examples; MB = 10^6 bytes.", ""]
    lines += ["## Figures", ""]
    for name in figures:
        title, text = EXPLANATIONS[name]
        lines += [f"### {title}", "", f"![{title}]({name})", "", text, ""]
    lines += ["## Summary tables", "",
              "Per method: mean and minimum personal accuracy over clients at the final round, received "
              "and trained (see the first figure), global model accuracy on the union of the clients' test "
              "splits (- where no global model exists: `local` methods and personal masks or layers), MB sent "
              "up (clients to server) and down, mean final sparsity, mean personal-model latency "
              "(ms per batch of 32) and FLOPs per example (thousands), wall-clock seconds.", ""]
    for run in runs:
        lines += _run_section(run)
    return "\n".join(lines).rstrip() + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Read ``run_dirs``, write the figures and ``report.md`` into ``out_dir``; return the report path.

    Raises ``fedprune.analysis.runs.RunError`` (nothing written) if a folder is not a run.
    """
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, plot in FIGURES:
        plot(runs, out / name)
        names.append(name)
    report = out / REPORT_NAME
    report.write_text(render_markdown(runs, names))
    return report
