"""256 fixed English sentences for all-MiniLM-L6-v2 (generated deterministically: nothing is downloaded).

``sentences()`` returns the list; ``load()`` (the recipe's ``data: {name: "minilm_data.py:load"}``) returns
(calibration sentences, evaluation sentences) as text: 128 others made with another seed, then the 256
(effdnn tokenizes them with the model's tokenizer)."""
from __future__ import annotations

import random

SUBJECTS = ["The engineer", "A small child", "My neighbour", "The old farmer", "Our team", "The committee",
            "A young student", "The pilot", "The museum guide", "Her brother", "The chef", "A tired doctor",
            "The river", "This software", "The city council", "A quiet musician"]
VERBS = ["repaired", "painted", "described", "discovered", "cooked", "ignored", "measured", "carried",
         "explained", "photographed", "sold", "planted", "translated", "reviewed", "borrowed", "designed"]
OBJECTS = ["the broken bicycle", "a bright red kite", "the history of the valley", "an unusual fossil",
           "a spicy vegetable soup", "the warning signs", "the distance to the mountain", "a heavy wooden box",
           "the rules of the game", "the northern lights", "an antique clock", "a row of apple trees",
           "a letter from Portugal", "the quarterly budget", "a book about whales", "a faster search engine"]
ENDINGS = ["before the storm arrived.", "in the early morning.", "with surprising care.", "for the local school.",
           "after a long discussion.", "while everyone was asleep.", "during the summer festival.",
           "without asking anyone.", "because it seemed important.", "near the train station.", "last winter.",
           "to win the competition.", "as the sun went down.", "under strict supervision.", "in record time.",
           "for no obvious reason."]


def sentences(n: int = 256, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}"
        if i % 3 == 0:  # longer sentences: two clauses
            s = s[:-1] + f", and then {rng.choice(SUBJECTS).lower()} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."
        out.append(s)
    return out


def load(n: int = 256, calib: int = 128) -> tuple[list[str], list[str]]:
    return sentences(calib, seed=1), sentences(n)
