# The names every rule file shares: the config's plan (common/workflow.py: input and output file lists, rerun
# triggers, job settings; paths from common/layout.py) and the wildcard constraints. Layout: docs/design.md
# ("Files"). This file and the other rule files hold no functions (`snakemake --lint`); they live in
# common/workflow.py.
from common.workflow import (  # noqa: E402 (the Snakefile put the repo on sys.path)
    SPLITS,
    Plan,
    checked_tag,
    device_arg,
    effective_config_path,
    job_resources,
    layout_log,
    local_files,
    one_of,
    parent_dir,
    train_launcher,
    trigger,
    untracked,
)
from common.layout import PREFERENCE_DATA_KEYS, SFT_DATA_KEYS, split_settings  # noqa: E402

PLAN = Plan(config)
LAYOUT = PLAN.layout
PROFILE = config["profile"]
RUNS = config["runs"]
METHODS = PLAN.methods
# The merged, validated config every job reads (--config), passed as an untracked param: the keys a job reads
# are its `params: settings`, the rerun trigger.
CONFIG_FILE = untracked(effective_config_path(config))


wildcard_constraints:
    split="|".join(SPLITS),
    shard=r"shard_\d{5}",
    method="|".join(METHODS) or "(?!)",
    lengths=r"\d+_\d+_\d+",
    packing="wrap|doc",
    block_length=r"\d+",
    # the zero-shot corpora's folders (common/layout.py): only the config's own, so a folder of other settings
    # is never written by this config's jobs
    zs_name=one_of({config["zero_shot"]["corpora"][label]["name"] for label in PLAN.zero_shot_corpora}),
    zs_tag=one_of(LAYOUT.zero_shot_tag(label) for label in PLAN.zero_shot_corpora),
    zs_corpus=one_of(PLAN.zero_shot_corpora),
