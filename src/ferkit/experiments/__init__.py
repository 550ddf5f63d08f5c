"""Generated-data experiments: how much do synthetic faces help, and where does it stop?

- :mod:`ferkit.experiments.mix`: ``ferkit mix`` and the selection rules the study shares.
- :mod:`ferkit.experiments.study`: ``ferkit study``: plan, run (sharded, resumable), evaluate.
- :mod:`ferkit.experiments.folds`: grouped k-fold plans (no person in both training and test).
- :mod:`ferkit.experiments.stats`: intervals of differences, paired by seed (and fold).
- :mod:`ferkit.experiments.report`: tables, plot and summary.

Example::

    from ferkit.experiments import StudyConfig, run_study, build_mix
    build_mix("data/train", ["data/synth"], ratio=2, out="mix/train_k2.csv")
    res = run_study(StudyConfig(real_train="data/train", val="data/val", test="data/test",
                                synthetic=["gan=data/gan", "procedural=data/synth"], out="study", ratios="0,1,2,4"))
"""
from .folds import FoldPlan, image_groups, load_folds, plan_folds, write_fold_plan
from .mix import (
                  MANIFEST_FIELDS,
                  MixResult,
                  allocate,
                  build_mix,
                  draw_per_class,
                  parse_ratios,
                  parse_sizes,
                  real_subset,
                  write_manifest,
)
from .report import (
                  StudyResult,
                  aggregate,
                  best_and_plateau,
                  compare_settings,
                  markdown_table,
                  plot_study,
                  summarise,
                  summary_lines,
)
from .stats import diff_ci, format_ci, t_quantile
from .study import (
                  CHECKPOINTS,
                  MIX_KEYS,
                  PER_RUN_FIELDS,
                  UNNAMED_SOURCE,
                  Arm,
                  RunSpec,
                  StudyConfig,
                  arm_definition,
                  migrate_identity,
                  parse_arm,
                  parse_setting,
                  parse_shard,
                  parse_sources,
                  plan_study,
                  run_study,
                  shard_runs,
                  study_arms,
)

__all__ = ["CHECKPOINTS", "MANIFEST_FIELDS", "MIX_KEYS", "PER_RUN_FIELDS", "UNNAMED_SOURCE", "Arm", "FoldPlan",
           "MixResult", "RunSpec", "StudyConfig", "StudyResult", "aggregate", "allocate", "arm_definition",
           "best_and_plateau", "build_mix", "compare_settings", "diff_ci", "draw_per_class", "format_ci",
           "image_groups", "load_folds", "markdown_table", "migrate_identity", "parse_arm", "parse_ratios",
           "parse_setting", "parse_shard", "parse_sizes", "parse_sources", "plan_folds", "plan_study", "plot_study",
           "real_subset", "run_study", "shard_runs", "study_arms", "summarise", "summary_lines", "t_quantile",
           "write_fold_plan", "write_manifest"]
