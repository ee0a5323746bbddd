# cascade-dllm: raw text -> annotated Parquet -> stage datasets -> cascaded diffusion training ->
# cascade sampling -> evaluation -> paper tables. See README.md and docs/design.md.
#
#   snakemake --cores 2                                   # the embedded default (config.yaml)
#   snakemake --profile profiles/slurm --configfile configs/paper.yaml
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)
from common.config import check_configfiles, validate_config  # noqa: E402
from preprocess.models import check_models  # noqa: E402

# config.yaml is the embedded default; a --configfile replaces it (several are merged key by key, in order),
# so each file of configs/ is a whole recipe and no run of the demo leaks into it. The schema's defaults fill
# in whatever a file leaves out; --config overrides single keys on top of either.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config.yaml")


# A target written after --configfile is read as one more config file: a file that is not a config (a run's
# JSON output merged into the config) stops the run here, saying so. (A binary or missing one stops Snakemake
# before the Snakefile runs.)
check_configfiles(workflow.overwrite_configfiles or [])

# A wrong key or value stops the run here, before any job, naming the key; every default of
# schemas/config.schema.yaml is filled in, so the rules and the jobs read config[...] directly.
validate_config(config)


# A spaCy or KeyBERT model that is not installed here fails when the run starts, before any job, naming the
# key, not after the corpus and tokenizer jobs. A dry run plans without them; annotate.check_models: false
# skips the check (a cluster login node without the models its compute nodes have), and so does a config that
# annotates nothing (no stages section).
onstart:
    if config["annotate"]["check_models"] and "stages" in config:
        check_models(config["annotate"])


include: "rules/common.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/eval.smk"


rule all:
    default_target: True
    input:
        PLAN.preprocess_outputs(),
        PLAN.report_outputs(),


rule preprocess:
    input:
        PLAN.preprocess_outputs(),
