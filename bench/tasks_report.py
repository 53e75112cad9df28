"""Markdown report of bench/tasks.py, rebuilt from the parts' json files in the out folder."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def _model_line(info: dict | None) -> str:
    if not info:
        return ""
    return (f"Model `{info['run']}`: {info['backbone']}/{info['preset']} (auto = UNet small for 28x28), "
            f"batch {info['batch_size']}, {info['steps']} optimiser steps in {info['minutes']} min "
            + (f"(budget {info['max_minutes']} min), " if info["max_minutes"] else "(no time limit in its config), ")
            + f"checkpoint {info['checkpoint']}.")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _by_method(rows: list[dict], column: str) -> tuple[list, list[str], dict]:
    """The values of ``column`` and the methods, each in order of first appearance, and the rows keyed by
    (method, value)."""
    values = list(dict.fromkeys(x[column] for x in rows))
    methods = list(dict.fromkeys(x["method"] for x in rows))
    return values, methods, {(x["method"], x[column]): x for x in rows}


def denoise_md(r: dict) -> list[str]:
    rows = r["rows"]
    sig, methods, get = _by_method(rows, "sigma")
    sig = sorted(sig)
    head = f"`{r['command']}` ({r['finished']}, {r['part_seconds']} s). {_model_line(r.get('model'))}"
    note = ("PSNR (dB, [0, 1] range, mean over images) and ms per image. Methods marked * ran on the first "
            f"{r['n_sub']} images only; the second table compares every method on those.")
    out = [f"## Denoising ({r['dataset']}, {r['n']} held-out digits)", "", head, "", note, ""]
    body = []
    for m in methods:
        star = "*" if get[(m, sig[0])]["n"] < r["n"] else ""
        body.append([m + star] + [f"{get[(m, s)]['psnr']:.2f} ({get[(m, s)]['ms_per_image']:.0f} ms)" for s in sig])
    out += _table(["method"] + [f"sigma {s}" for s in sig], body)
    if r["n_sub"] < r["n"]:
        out += ["", f"Same, first {r['n_sub']} images, every method:", ""]
        out += _table(["method"] + [f"sigma {s}" for s in sig],
                      [[m] + [f"{get[(m, s)]['psnr_sub']:.2f}" for s in sig] for m in methods])
    nl = [f"sigma {x['sigma']}: {x['params']}" for x in rows if x["method"].startswith("NLM")]
    out += ["", "NLM settings picked per sigma on 40 training-split digits (grid h/sigma 0.6/0.8/1.0, patch 3/5, "
            "distance 3/6; 8x8 digits: patch 3, distance 2/3): " + "; ".join(nl) + "."]
    bm = {s: get[("BM3D (5x5 mosaics)", s)]["psnr_sub"] for s in sig}
    if r.get("bm3d_check"):
        c = r["bm3d_check"]
        out += ["", (f"BM3D runs on 5x5 mosaics of digits (a ~4 s fixed cost per bm3d call here). Check at sigma "
                     f"{c['sigma']} on {c['n']} images: one call per image {c['single']:.2f} dB, mosaic "
                     f"{c['mosaic']:.2f} dB.")]
    out += ["", "Target (difflab >= BM3D + 2 dB at every sigma; on the common images):", ""]
    for m in methods:
        if m.startswith("difflab"):
            d = [get[(m, s)]["psnr_sub"] - bm[s] for s in sig]
            ok = all(v >= 2 for v in d)
            out.append(f"- {m}: " + ", ".join(f"{v:+.2f} dB" for v in d) + (" -> met" if ok else " -> NOT met"))
    return out


def inpaint_md(r: dict) -> list[str]:
    rows = r["rows"]
    masks, methods, get = _by_method(rows, "mask")
    out = [f"## Inpainting ({r['dataset']}, {r['n']} held-out digits)", "",
           f"`{r['command']}` ({r['finished']}, {r['part_seconds']} s). {_model_line(r.get('model'))}", "",
           (f"PSNR (dB) on the filled pixels only / accuracy of the independent CNN classifier on the inpainted "
           f"image (true labels). Classifier accuracy on the clean images: {r['clean_acc']:.3f} on these "
           f"{r['n']} ({r['clean_acc_sub']:.3f} on the first {r['n_sub']}, {r['clean_acc_all_test']:.3f} on "
           f"all held-out digits). Random mask: {int(100 * r['random_frac'])}% of the pixels missing. "
           f"Methods marked * ran on the first {r['n_sub']} images."), ""]
    body = []
    for m in methods:
        star = "*" if get[(m, masks[0])]["n"] < r["n"] else ""
        body.append([m + star] + [f"{get[(m, k)]['psnr']:.2f} / {get[(m, k)]['acc']:.3f} ({get[(m, k)]['seconds']:.0f} s)"
                                  for k in masks])
    out += _table(["method"] + masks, body)
    if r["n_sub"] < r["n"]:
        out += ["", f"Same, first {r['n_sub']} images, every method:", ""]
        out += _table(["method"] + masks, [[m] + [f"{get[(m, k)]['psnr_sub']:.2f} / {get[(m, k)]['acc_sub']:.3f}"
                                                  for k in masks] for m in methods])
    out += ["", "Target (difflab above biharmonic and Telea on PSNR and class accuracy; common images):", ""]
    for m in methods:
        if m.startswith("difflab"):
            parts = []
            for k in masks:
                best_p = max(get[(b, k)]["psnr_sub"] for b in methods if b.startswith(("biharmonic", "Telea")))
                best_a = max(get[(b, k)]["acc_sub"] for b in methods if b.startswith(("biharmonic", "Telea")))
                p, a = get[(m, k)]["psnr_sub"] - best_p, get[(m, k)]["acc_sub"] - best_a
                parts.append(f"{k}: PSNR {p:+.2f} dB, acc {a:+.3f}" + (" met" if p > 0 and a > 0 else " NOT met"))
            out.append(f"- {m.split(' (')[0]}: " + "; ".join(parts))
    return out


def oneclass_md(r: dict) -> list[str]:
    rows = r["rows"]
    digits, methods, get = _by_method(rows, "digit")
    runs = r["runs"]
    out = [f"## One-class MNIST ({r['dataset']}, {r['n_test']} held-out digits scored, normal = the class)", "",
           f"`{r['command']}` ({r['finished']}, {r['part_seconds']} s). One difflab run per digit: "
           + "; ".join(f"{d}: {v['backbone']}/{v['preset']}, batch {v['batch_size']}, {v['steps']} steps in "
                       f"{v['minutes']} min" for d, v in runs.items()) + ".", "",
           (f"AUROC (AUPRC in brackets). difflab recon: default levels, {r.get('draws', 4)} noise draw(s) per level, "
           "256 training images of the class as reference, levels combined by the default for images with a reference "
           "(the error profile, `combine='profile'`); \"mean of levels\": the same errors averaged over the levels "
           "(`combine='mean'`)."), ""]
    body = [[m] + [f"{get[(m, d)]['auroc']:.3f} ({get[(m, d)]['auprc']:.3f})" for d in digits]
            + [f"{np.mean([get[(m, d)]['auroc'] for d in digits]):.3f}"] for m in methods]
    out += _table(["method"] + [f"digit {d}" for d in digits] + ["mean AUROC"], body)
    return out + _vs_forest([(m, [get[(m, d)]["auroc"] for d in digits]) for m in methods], "digits")


def _vs_forest(per_method: list[tuple[str, list[float]]], what: str) -> list[str]:
    forest = dict(per_method)["IsolationForest"]
    out = ["", f"Target (AUROC above IsolationForest on most {what} and on the mean):", ""]
    for m, v in per_method:
        if m.startswith("difflab"):
            wins = sum(a > b for a, b in zip(v, forest))
            ok = wins > len(v) / 2 and np.mean(v) > np.mean(forest)
            out.append(f"- {m}: wins {wins}/{len(v)}, mean {np.mean(v):.3f} vs {np.mean(forest):.3f}"
                       + (" -> met" if ok else " -> NOT met"))
    return out


def adbench_md(r: dict) -> list[str]:
    rows = r["rows"]
    sets = list(dict.fromkeys(x["set"] for x in rows))
    methods = list(dict.fromkeys(x["method"] for x in rows))
    vals = defaultdict(list)
    for x in rows:
        vals[(x["method"], x["set"])].append(x)
    head = (f"`{r['command']}` ({r['finished']}, {r['part_seconds']} s). Setting: {r['setting']}. "
            f"torch threads {r['threads']}. Mean over seeds (sd in brackets); seconds = fit + score, mean per seed.")
    out = [f"## ADBench ({r['seeds']} seeds)", "", head, ""]
    for metric in ("auroc", "auprc"):
        body = []
        for m in methods:
            cells = []
            for s in sets:
                v = [x[metric] for x in vals[(m, s)]]
                cells.append(f"{np.mean(v):.3f} ({np.std(v):.3f})")
            sec = np.mean([x["seconds"] for s in sets for x in vals[(m, s)]])
            body.append([m] + cells + [f"{np.mean([np.mean([x[metric] for x in vals[(m, s)]]) for s in sets]):.3f}",
                                       f"{sec:.1f}"])
        out += [f"**{metric.upper()}**", ""] + _table(["method"] + sets + ["mean", "s"], body) + [""]
    first = rows[0]
    out.append("Split sizes: " + ", ".join(
        f"{s}: fit {vals[(methods[0], s)][0]['n_fit']} normal rows, test {vals[(methods[0], s)][0]['n_test']} "
        f"({vals[(methods[0], s)][0]['anomalies_test']} anomalies)" for s in sets) + f" (seed {first['seed']}).")
    return out + _vs_forest([(m, [np.mean([x["auroc"] for x in vals[(m, s)]]) for s in sets]) for m in methods],
                            "sets")


def write_report(out_dir: Path, path: Path) -> None:
    lines = ["# bench/tasks.py: denoising, inpainting and anomaly detection against classical baselines", "",
             (f"Written by bench/tasks.py from the json files in `{out_dir.name}`; see the module docstring "
             "for the protocol. CPU only (2 shared cores)."), ""]
    for part, fn in (("denoise", denoise_md), ("inpaint", inpaint_md), ("anomaly", oneclass_md),
                     ("adbench", adbench_md)):
        f = out_dir / f"{part}.json"
        if f.exists():
            lines += fn(json.loads(f.read_text())) + [""]
    path.write_text("\n".join(lines))
    print("\n".join(lines))
