"""fid-bench's tables and figures from its cells: results.md and relearn_curve.png.

results.md holds the paper-shaped table, sample quality, the robustness table and the base model."""
from __future__ import annotations

from pathlib import Path

from dualerase.reports.robustness import flatten, plot_relearn
from dualerase.reports.robustness import table as robustness_table
from dualerase.reports.summary import KID_SCALE, method, protocol_line
from dualerase.reports.summary import number as _num


def _gap(after: float | None, before: float | None, spec: str) -> str:
    return "n/a" if after is None or before is None else format(after - before, spec)


def robust_keys(cells: list[dict]) -> list[str]:
    """The robustness scores (`robustness.flatten`) any cell measured after erasure, in order."""
    return list(dict.fromkeys(k for m in cells
                              for k in flatten(m["after"].get("robustness", {}))))


def markdown(rows: list[dict], cells: list[dict], command: str, diverged: list[str] = (),
             failed: list[str] = ()) -> str:
    """results.md: the paper-shaped table (mean +- std across seeds) and the gap to the base model.

    Args:
        rows: the table's rows (a method, optimizer and class each, aggregated over seeds).
        cells: every cell's metrics.json.
        command: the command that ran the benchmark, quoted at the top.
        diverged: the cells that diverged (listed at the end).
        failed: the cells that failed with another error (listed at the end)."""
    head = ("| method | optimizer | class | runs | FA (lower better) | FA, published rule | "
            "not a digit | retain acc | FID | gap FA | gap retain acc | gap FID |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {method(r)} | {r['optimizer']} | {r['class']} | {r['runs']} | "
                     f"{_num(r['forget_accuracy'], '.3f')} +- "
                     f"{_num(r['forget_accuracy_std'], '.3f')} | "
                     f"{_num(r['forget_accuracy_published'], '.3f')} | "
                     f"{_num(r['forget_not_a_class'], '.3f')} | "
                     f"{_num(r['retain_accuracy'], '.3f')} +- "
                     f"{_num(r['retain_accuracy_std'], '.3f')} | "
                     f"{_num(r['fid'], '.2f')} +- {_num(r['fid_std'], '.2f')} | "
                     f"{_gap(r['forget_accuracy'], r['base_forget_accuracy'], '+.3f')} | "
                     f"{_gap(r['retain_accuracy'], r['base_retain_accuracy'], '+.3f')} | "
                     f"{_gap(r['fid'], r['base_fid'], '+.2f')} |")
    # cells whose protocol states its KID print it x1e3; older records as they were written
    kid_head, scale, spec = (("KID x1e3", KID_SCALE, ".2f") if "kid" in cells[0]["protocol"]
                             else ("KID", 1, ".4f"))

    def kid(value: float | None) -> float | None:
        return None if value is None else value * scale

    quality = [f"| method | optimizer | class | FID | {kid_head} | precision | recall | "
               f"gap {kid_head} | gap precision | gap recall |",
               "|---|---|---|---|---|---|---|---|---|---|"]
    quality += [f"| {method(r)} | {r['optimizer']} | {r['class']} | {_num(r['fid'], '.2f')} | "
                f"{_num(kid(r.get('kid')), spec)} | {_num(r.get('precision'), '.3f')} | "
                f"{_num(r.get('recall'), '.3f')} | "
                f"{_gap(kid(r.get('kid')), kid(r.get('base_kid')), '+' + spec)} | "
                f"{_gap(r.get('precision'), r.get('base_precision'), '+.3f')} | "
                f"{_gap(r.get('recall'), r.get('base_recall'), '+.3f')} |" for r in rows]
    seeds = sorted({m["seed"] for m in cells})
    base = {}
    for m in cells:
        base.setdefault(str(m["forget_class"]), m["before"])
    base_lines = [f"| {c} | {_num(b['forget_accuracy'], '.3f')} | "
                  f"{_num(b.get('forget_accuracy_published'), '.3f')} | "
                  f"{_num(b.get('forget_not_a_class'), '.3f')} | "
                  f"{_num(b['retain_accuracy'], '.3f')} | {_num(b['fid'], '.2f')} |"
                  for c, b in sorted(base.items())]
    missing = sum(m[side]["fid"] is None for m in cells for side in ("before", "after"))
    proto = protocol_line({**cells[0]["protocol"], "seed": ", ".join(map(str, seeds))})
    models = ", ".join(f"`{m}`" for m in dict.fromkeys(c["model"] for c in cells if "model" in c))
    return "\n".join([
        "# fid-bench results", "", f"Command: `{command}`", "",
        f"Protocol: {proto}.", "",
        *([f"Base model (its content digest): {models}.", ""] if models else []),
        "Each cell is one erasure. `+-` is the sample standard deviation across seeds (n/a from a "
        "single seed); an `all` row averages the per-class means and the per-class standard "
        "deviations. Gaps are after minus before (the base model).", "",
        *([f"FID was not finite in {missing} evaluation(s) (null in their metrics.json, with "
           "fid_error saying why): means and stds are over the others, n/a where none is left.",
           ""] if missing else []),
        *lines, "", *robustness_table(rows, robust_keys(cells)),
        f"Sample quality of the retained classes, on the features FID uses (means over seeds; "
        f"{kid_head}: unbiased MMD{'^2, its kernel in the protocol' if scale != 1 else ''}; "
        "precision and recall: k-NN balls, k = 3):", "", *quality, "",
        f"Base model (before erasure), scored with the noise of seed {cells[0]['seed']}:", "",
        "| class | FA | FA, published rule | not a digit | retain acc | FID |",
        "|---|---|---|---|---|---|",
        *base_lines, "",
        *([f"Diverged cells (no after metrics, left out of the table): {len(diverged)}", ""]
          + [f"* {d}" for d in diverged] + [""] if diverged else []),
        *([f"Failed cells (an error other than divergence, its traceback in the cell's failed.txt; "
           f"delete that file to run the cell again): {len(failed)}", ""]
          + [f"* {f}" for f in failed] + [""] if failed else [])])


def relearn_panels(cells: list[dict], path: Path) -> bool:
    """Draw a benchmark's relearn_curve.png at `path` (`robustness.plot_relearn`).

    A row per class, a line per method and optimizer (its band over seeds) and the base model's
    line. Returns False when no cell ran the relearning attack."""
    panels: dict[str, dict[str, list[dict]]] = {}
    for m in cells:
        lines = panels.setdefault(f"class {m['forget_class']}", {"base": []})
        lines["base"].append(m["before"].get("robustness", {}).get("relearn", {}))
        after = m["after"].get("robustness", {}).get("relearn", {})
        lines.setdefault(f"{m['method']} {m['optimizer']}", []).append(after)
    return plot_relearn(panels, path)


