# cascade-dllm: raw text -> annotated Parquet -> stage datasets -> cascaded diffusion training ->
# cascade sampling -> evaluation -> paper tables. See README.md and ../shared/DESIGN.md.
#
#   snakemake --cores 2                                   # the embedded default (config.yaml)
#   snakemake --profile profiles/slurm --configfile configs/paper.yaml
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config.yaml")


# A wrong key or value stops the run here, before any job, naming the key.
validate(config, os.path.join(workflow.basedir, "schemas/config.schema.yaml"))


include: "rules/common.smk"
include: "rules/preprocess.smk"
include: "rules/train.smk"
include: "rules/eval.smk"


rule all:
    default_target: True
    input:
        preprocess_outputs(),
        report_outputs(),


rule preprocess:
    input:
        preprocess_outputs(),
