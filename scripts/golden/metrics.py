#!/usr/bin/env python3
"""Golden values for crates/bidora-data's metrics, from the reference libraries.

    scripts/golden/setup.sh /opt/bidora-py
    PYTHONPATH=/opt/bidora-py /usr/bin/python3 scripts/golden/metrics.py

Writes crates/bidora-data/tests/fixtures/metrics.json: inputs and the values computed by
scikit-learn (accuracy, F1, MCC), scipy (Pearson, Spearman), seqeval (entity P/R/F1, default
mode), sacrebleu (corpus BLEU, tokenize="none"), rouge-score (ROUGE-L F, max over
references, averaged), NLTK (corpus NIST, n=5) and pycocoevalcap (CIDEr-D). Edge cases included: constant predictions, empty entity sets,
zero-length hypotheses. NaN is written as null.
"""

import json
import math
import os
import random
import warnings

warnings.filterwarnings("ignore")

import sacrebleu
import scipy
import seqeval
import sklearn
from rouge_score import rouge_scorer
from nltk.translate.nist_score import corpus_nist
from pycocoevalcap.cider.cider import Cider
from scipy.stats import pearsonr, spearmanr
from sacrebleu.metrics import BLEU
from seqeval.metrics import f1_score as seq_f1, precision_score as seq_p, recall_score as seq_r
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "crates", "bidora-data", "tests", "fixtures", "metrics.json")


def num(x):
    x = float(x)
    return None if math.isnan(x) else x


def main():
    rng = random.Random(7)
    classification = []
    for name, pred, gold in [
        ("random_binary", [rng.randint(0, 1) for _ in range(200)], [rng.randint(0, 1) for _ in range(200)]),
        ("mostly_right", [1, 0, 1, 1, 0, 0, 1, 0, 1, 1], [1, 0, 1, 0, 0, 0, 1, 1, 1, 1]),
        ("constant_prediction", [1] * 12, [0, 1] * 6),
        ("no_positives", [0] * 6, [0] * 6),
        ("three_classes", [rng.randint(0, 2) for _ in range(150)], [rng.randint(0, 2) for _ in range(150)]),
    ]:
        binary = max(pred + gold) <= 1
        classification.append({
            "name": name, "pred": pred, "gold": gold,
            "accuracy": accuracy_score(gold, pred),
            "f1": f1_score(gold, pred, zero_division=0) if binary else None,
            "mcc": matthews_corrcoef(gold, pred),
        })

    regression = []
    for name, x, y in [
        ("noisy_linear", [i / 10 for i in range(50)], [i / 10 + rng.gauss(0, 1) for i in range(50)]),
        ("ties", [1, 2, 2, 3, 3, 3, 4, 5], [2, 1, 2, 3, 5, 3, 4, 4]),
        ("constant_prediction", [2.5] * 10, [rng.random() * 5 for _ in range(10)]),
    ]:
        regression.append({
            "name": name, "x": x, "y": y,
            "pearson": num(pearsonr(x, y)[0]),
            "spearman": num(spearmanr(x, y)[0]),
        })

    tagging = []
    types = ["PER", "LOC", "ORG"]

    def random_tags(n):
        out = []
        for _ in range(n):
            r = rng.random()
            out.append("O" if r < 0.5 else ("B-" if r < 0.75 else "I-") + rng.choice(types))
        return out

    for name, pred, gold in [
        ("random", [random_tags(rng.randint(1, 12)) for _ in range(40)], None),
        ("exact", [["B-PER", "I-PER", "O"], ["B-LOC"]], [["B-PER", "I-PER", "O"], ["B-LOC"]]),
        ("empty_prediction", [["O", "O"], ["O"]], [["B-PER", "O"], ["B-LOC"]]),
        ("empty_gold", [["B-PER", "O"]], [["O", "O"]]),
        ("both_empty", [["O"]], [["O"]]),
        ("dangling_inside", [["I-PER", "I-PER", "O", "I-LOC", "B-LOC"]], [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]),
    ]:
        if gold is None:
            gold = [[t if rng.random() < 0.7 else random_tags(1)[0] for t in s] for s in pred]
        tagging.append({
            "name": name, "pred": pred, "gold": gold,
            "precision": seq_p(gold, pred), "recall": seq_r(gold, pred), "f1": seq_f1(gold, pred),
        })

    words = "the a cat dog sat ran on under mat rug quickly slowly".split()

    def sentence(n):
        return " ".join(rng.choice(words) for _ in range(n))

    generation = []
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for name, hyps, refs in [
        ("random", [sentence(rng.randint(3, 12)) for _ in range(30)],
         [[sentence(rng.randint(3, 12)) for _ in range(rng.randint(1, 3))] for _ in range(30)]),
        ("exact", ["the cat sat on the mat"], [["the cat sat on the mat"]]),
        ("zero_length_hypothesis", ["", "the cat"], [["the cat sat"], ["the cat"]]),
        ("short_hypothesis", ["the cat"], [["the cat sat on the mat", "a cat sat"]]),
        ("punctuation_case", ["The cat, sat!"], [["the cat sat"]]),
        ("long_enough", ["the cat sat on the mat today", "a dog ran under the rug quickly"],
         [["the cat sat on a mat today", "a cat was on the mat"], ["the dog ran under a rug", "a dog ran quickly"]]),
    ]:
        # sacrebleu wants references as streams: list over reference slots, padded with "".
        n_slots = max(len(r) for r in refs)
        streams = [[r[i] if i < len(r) else None for r in refs] for i in range(n_slots)]
        bleu = BLEU(tokenize="none").corpus_score(hyps, streams).score
        rouge = sum(max(scorer.score(r, h)["rougeL"].fmeasure for r in rs) for h, rs in zip(hyps, refs)) / len(hyps)
        try:
            nist = corpus_nist([[r.split() for r in rs] for rs in refs], [h.split() for h in hyps], n=5)
        except ZeroDivisionError:  # NLTK divides by zero when an n-gram order is empty
            nist = None
        cider = Cider().compute_score({i: rs for i, rs in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)})[0]
        generation.append({"name": name, "hyps": hyps, "refs": refs, "bleu": bleu, "rouge_l": rouge,
                           "nist": nist, "cider": float(cider)})

    versions = {"scikit-learn": sklearn.__version__, "scipy": scipy.__version__,
                "seqeval": getattr(seqeval, "__version__", "1.2.2"), "sacrebleu": sacrebleu.__version__,
                "rouge-score": "0.1.2", "nltk": "3.9.1", "pycocoevalcap": "1.2"}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as fh:
        json.dump({"generator": "scripts/golden/metrics.py", "versions": versions,
                   "classification": classification, "regression": regression,
                   "tagging": tagging, "generation": generation}, fh, indent=1)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
