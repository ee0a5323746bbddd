r"""Preference pairs from a model's own answers: the training pairs of a dpo run with ``pairs: own_answers``
(rule own_pairs), written in the preference shard format of preprocess/preference.py.

    python -m eval.own_pairs --config config.yaml --model-dir runs/sft/sft/model \
        --tokenizer data/pydoc/tokenizer-<tag> --out runs/sft/dpo-own-r1/pairs/train/shard_00000.parquet

For each of the first dpo.own_answers.prompts training prompts x of dpo.source (all when null; its train split,
read as for preference_data by preprocess.preference.iter_split: the prompt messages and a reference answer r,
the task's correct answer for a task source, the record's chosen answer for files and hub data) the model draws
K = dpo.own_answers.samples answers a_1 .. a_K: eval/generate.py at temperature T = dpo.own_answers.temperature
with the sft section's gen_length, eval_steps, remasking and eos_guard (the settings evaluate_sft and evaluate_dpo
answer with), a_j the j-th repeat of x, so each answer has its own seeded stream (eval.generate.prompt_seeds).
With dpo.own_answers.greedy_first, a_1 is instead the greedy answer (temperature 0: the decoding the task score of
eval/dpo.py judges) and a_2 .. a_K are the first K - 1 draws at T, so a prompt the model answers wrong when scored
gives a pair whose rejected answer is that very answer.
The judge (eval.dpo.judge: the task's check, common/tasks.py, for a task source; else exact match with r after
whitespace normalisation) accepts or refuses each answer, and

    chosen   = the first accepted a_j; if none is accepted, r (own_answers.reference_fallback), else the prompt
               is skipped as no_correct_answer
    rejected = the first refused a_j; if all K are accepted the prompt is skipped as no_wrong_answer (the model
               already answers it right: no preference to learn from it)

A pair then passes preprocess.preference.build's checks (special tokens in an answer, a canvas longer than
sft.length: counted skips) into the same PAIR_SCHEMA canvases, with rejection "own_answer". The rejected answer
is the model's real mistake, not a rule-made one (preprocess/preference.py's rules), so DPO pushes down what the
model actually does wrong.

Rounds. The model is the run's start (init_from's model folder): a dpo run whose init_from is another dpo run
with pairs: own_answers samples from that run's DPO model: round r's pairs come from round r - 1's model (online
or iterative DPO as DAG runs); a new start model means new pairs (its files are the job's inputs).

The stats JSON (beside the shard) adds what the pairs look like, beside preference_data's counts and skips:

    prompts                 prompts answered (source pairs read minus the source's own skips)
    samples                 K
    answers_accepted        share of the K x prompts answers the judge accepts: the start model's accuracy at T
                            (with greedy_first, its greedy answers counted among them)
    greedy_accepted         with greedy_first: share of prompts whose greedy answer a_1 the judge accepts (the
                            start model's task score on these training prompts); else null
    pairs_share             pairs written / prompts
    chosen_from             {"sample": n, "reference": n}: where the chosen answers of the pairs made here came
                            from (before build's canvas checks, which may still skip a pair as truncated)
    mean_draws_to_wrong     over prompts with a refused answer, the mean index j (1-based) of the first one
    examples                the prompt, the reference, the K answers, their verdicts and the outcome of up to
                            EXAMPLES prompts that made a pair and up to 2 of each skip reason, in prompt order
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice

import torch

from common.config import ConfigError, load_config
from common.device import add_device_arguments, device_from_arguments
from common.io import InputError
from eval.dpo import judge
from preprocess.preference import Item, Pair, build, iter_split
from preprocess.records import Skipped, load_tokenizer

PROMPTS_PER_CHUNK = 256  # prompts answered together (K answers each) before their pairs are written
EXAMPLES = 8
REJECTION = "own_answer"  # the rejection column of a pair made here


@dataclass
class Tally:
    """What the pairs look like, counted as prompts are judged (the stats of the module docstring)."""

    samples: int
    prompts: int = 0
    accepted: int = 0
    greedy_accepted: int | None = None  # counted only with greedy_first
    chosen_from: Counter = field(default_factory=Counter)
    draws_to_wrong: list[int] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)

    def stats(self, pairs_written: int) -> dict:
        answers = self.prompts * self.samples
        return {
            "prompts": self.prompts,
            "samples": self.samples,
            "answers_accepted": round(self.accepted / answers, 4) if answers else None,
            "greedy_accepted": (
                round(self.greedy_accepted / self.prompts, 4)
                if self.greedy_accepted is not None and self.prompts
                else None
            ),
            "pairs_share": round(pairs_written / self.prompts, 4) if self.prompts else None,
            "chosen_from": {k: self.chosen_from[k] for k in ("sample", "reference")},
            "mean_draws_to_wrong": (
                round(sum(self.draws_to_wrong) / len(self.draws_to_wrong), 3) if self.draws_to_wrong else None
            ),
            "examples": self.examples,
        }


def pair_from_answers(source: Pair, answers: list[str], verdicts: list[bool], reference_fallback: bool) -> Item:
    """The pair of one prompt from its K answers and the judge's verdicts (module docstring), or a Skipped."""
    wrong = [j for j, ok in enumerate(verdicts) if not ok]
    right = [j for j, ok in enumerate(verdicts) if ok]
    if not wrong:
        return Skipped(source.pair_id, "no_wrong_answer", f"all {len(answers)} answers accepted")
    if right:
        chosen = answers[right[0]]
    elif reference_fallback:
        chosen = source.chosen
    else:
        return Skipped(source.pair_id, "no_correct_answer", f"none of {len(answers)} answers accepted")
    return Pair(source.pair_id, source.prompt, chosen, answers[wrong[0]], REJECTION)


def own_answer_items(
    trained,
    items: Iterable[Item],
    source: str,
    own: dict,
    generation: dict,
    tally: Tally,
) -> Iterator[Item]:
    """The pairs (and skips) of ``items``' prompts from ``trained``'s answers, PROMPTS_PER_CHUNK prompts at a time.

    ``own`` is dpo.own_answers (samples, temperature, greedy_first, reference_fallback, batch_size, seed);
    ``generation`` holds gen_length, steps, remasking and eos_guard."""
    from common.chat import prompt_ids
    from eval.generate import generate

    k = own["samples"]
    greedy_first = own["greedy_first"]
    drawn = k - 1 if greedy_first else k  # answers sampled at the temperature, per prompt
    chunk: list[Pair] = []

    def answers_at(prompts: list[list[int]], temperature: float) -> list[str]:
        results = generate(
            trained,
            prompts,
            generation["gen_length"],
            generation["steps"],
            remasking=generation["remasking"],
            temperature=temperature,
            seed=own["seed"],
            eos_guard=generation["eos_guard"],
            batch_size=own["batch_size"],
        )
        return [r["answer"] for r in results]

    def answer(chunk: list[Pair]) -> Iterator[Item]:
        prompts = [prompt_ids(trained.tokenizer, pair.prompt) for pair in chunk]
        greedy = answers_at(prompts, 0.0) if greedy_first else None
        sampled = answers_at([ids for ids in prompts for _ in range(drawn)], own["temperature"]) if drawn else []
        for i, pair in enumerate(chunk):
            texts = ([greedy[i]] if greedy_first else []) + sampled[i * drawn : (i + 1) * drawn]
            verdicts = [judge(source, pair.prompt, pair.chosen, text) for text in texts]
            item = pair_from_answers(pair, texts, verdicts, own["reference_fallback"])
            tally.prompts += 1
            tally.accepted += sum(verdicts)
            if greedy_first:
                tally.greedy_accepted += verdicts[0]
            if not all(verdicts):
                tally.draws_to_wrong.append(verdicts.index(False) + 1)
            if isinstance(item, Pair):
                tally.chosen_from["sample" if any(verdicts) else "reference"] += 1
            outcome = item.reason if isinstance(item, Skipped) else "pair"
            if sum(e["outcome"] == outcome for e in tally.examples) < (EXAMPLES if outcome == "pair" else 2):
                tally.examples.append(
                    {
                        "pair_id": pair.pair_id,
                        "prompt": pair.prompt[-1]["content"],
                        "reference": pair.chosen,
                        "answers": texts,
                        "accepted": verdicts,
                        "outcome": outcome,
                    }
                )
            yield item

    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        chunk.append(item)
        if len(chunk) == PROMPTS_PER_CHUNK:
            yield from answer(chunk)
            chunk = []
    if chunk:
        yield from answer(chunk)


def build_own_pairs(
    config: dict, model_dir, tokenizer_dir, out, stats=None, device=torch.device("cpu"), seed: int | None = None
) -> dict:
    """Write the own-answer pairs of ``model_dir`` for the config's dpo.source train prompts; returns the stats.
    ``seed``: the draws' seed (rule own_pairs: dpo.own_answers.seed + the dpo run's seed, common.workflow
    Plan.own_pairs_seed), dpo.own_answers.seed when None."""
    from eval.trained import load_trained

    dpo, sft = config["dpo"], config["sft"]
    trained = load_trained(model_dir, device)
    generation = {
        "gen_length": sft["gen_length"],
        "steps": sft["eval_steps"],
        "remasking": sft["remasking"],
        "eos_guard": sft["eos_guard"],
    }
    own = {**dpo["own_answers"], "seed": dpo["own_answers"]["seed"] if seed is None else seed}
    tally = Tally(samples=own["samples"], greedy_accepted=0 if own["greedy_first"] else None)
    source = str(dpo["source"])
    prompts = islice(iter_split(dpo, "train"), own["prompts"])  # None: every one
    items = own_answer_items(trained, prompts, source, own, generation, tally)

    def more_stats(pairs_written: int) -> dict:
        return {
            "model": str(model_dir),
            "generation": {**generation, **own},
            **tally.stats(pairs_written),
        }

    tokenizer = load_tokenizer(tokenizer_dir)
    return build(dpo, sft["length"], tokenizer, "train", out, stats, items=items, more_stats=more_stats)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m eval.own_pairs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the pipeline config (its dpo and sft sections)")
    parser.add_argument("--model-dir", required=True, help="the model folder that answers (the dpo run's start)")
    parser.add_argument("--tokenizer", required=True, help="the pipeline's tokenizer folder (the canvases)")
    parser.add_argument("--out", required=True, help="the pair shard (Parquet)")
    parser.add_argument("--stats", help="stats JSON (default: <out>.stats.json beside the shard)")
    parser.add_argument("--seed", type=int, help="the draws' seed (default: the config's dpo.own_answers.seed)")
    add_device_arguments(parser)
    args = parser.parse_args(argv)
    try:
        stats = build_own_pairs(
            load_config(args.config),
            args.model_dir,
            args.tokenizer,
            args.out,
            args.stats,
            device_from_arguments(args),
            seed=args.seed,
        )
    except (ConfigError, InputError) as err:
        parser.exit(2, f"eval.own_pairs: error: {err}\n")
    print(json.dumps({k: v for k, v in stats.items() if k != "examples"}, indent=2))


if __name__ == "__main__":
    main()
