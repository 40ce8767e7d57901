"""``omnikern train`` and ``omnikern eval``: argparse front-ends over the trainer and the evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (JSON/TOML) and repeatable ``--set section.key=value`` overrides."""
    parser.add_argument("--config", type=Path, help="JSON or TOML config file (sections data/model/loss/optim/train)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (JSON value, else a string); repeatable")
    parser.add_argument("--steps", type=int, help="shorthand for --set train.steps=N")
    parser.add_argument("--cache-dir", help="shorthand for --set data.cache_dir=DIR (legacy vector cache)")


def config_from_args(args: argparse.Namespace):
    from omnikern.models.config import load_config

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.cache_dir is not None:
        overrides.append(f'data.cache_dir="{args.cache_dir}"')
    return load_config(args.config, overrides)


# Named ablations: each is a list of overrides on top of the run's config.
ABLATIONS = {
    "full": [],
    "no_logq": ["loss.logq_correction=false"],
    "no_id_mask": ["loss.id_masking=false"],
    "in_batch_only": ['loss.neg_mode="in_batch"'],
    "no_small_dims": ["loss.dims=[256, 512]", "loss.dim_weights=[1.0, 1.0]"],
    # The published from-scratch init instead of starting from the legacy embedding.
    "no_legacy_init": ["model.legacy_init=false"],
    # Not an ablation of the model: the materialising reference loss in place of the fused one,
    # which must train the same model (same curve, same Recall@10).
    "reference_loss": ['loss.impl="reference"'],
    # The same run with other seeds (init and batches): how far apart runs land by chance.
    "seed_1": ["train.seed=1"],
    "seed_2": ["train.seed=2"],
}


def cmd_train(args: argparse.Namespace) -> int:
    from omnikern.models.config import apply_overrides
    from omnikern.models.trainer import Trainer, export_for_serving

    config = config_from_args(args)
    if args.ablation:
        apply_overrides(config, ABLATIONS[args.ablation])
    trainer = Trainer(config, args.out, resume=args.resume)
    try:
        last = trainer.train()
    finally:
        trainer.close()
    if trainer.rank == 0:
        tower_dir, index_path = export_for_serving(trainer.model, trainer.data, args.out)
        print(f"trained {trainer.step_count} steps, last loss {last.get('loss', float('nan')):.4f}, "
              f"skipped {trainer.bad_steps}; checkpoint in {args.out}")
        print(f"for serving: omnikern export-triton --checkpoint {tower_dir} --index {index_path} --out <repo>")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from omnikern.models.recipe_eval import check_index_dim, evaluate_recipe_model, format_table, write_results
    from omnikern.models.trainer import build_encoder, load_trained

    model, config, data = load_trained(args.checkpoint)
    if args.index is not None:
        from omnikern import Int8Index

        index = Int8Index.load(args.index)
        check_index_dim(index, config.model.output_dim, f"checkpoint {args.checkpoint}")
    zero_shot = build_encoder(config, len(data.tokenizer)) if args.zero_shot else None
    results = evaluate_recipe_model(model, data, zero_shot=zero_shot)
    json_path, png_path = write_results(results, args.out or Path(args.checkpoint), "results")
    print(format_table(results))
    print(f"wrote {json_path} and {png_path}")
    return 0


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``train`` and ``eval`` to the ``omnikern`` subcommands."""
    train = sub.add_parser("train", help="train a model on the recipe catalogue (torchrun for several ranks)")
    add_config_arguments(train)
    train.add_argument("--out", type=Path, default=Path("runs/omnikern"), help="run directory (checkpoints, scalars.csv)")
    train.add_argument("--resume", type=Path, help="checkpoint or run directory to continue from")
    train.add_argument("--ablation", choices=sorted(ABLATIONS), help="apply a named ablation's overrides")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="evaluate a checkpoint: Recall@10/100 and MRR per query set")
    evaluate.add_argument("checkpoint", type=Path, help="checkpoint or run directory")
    evaluate.add_argument("--out", type=Path, help="where results.json/.png go (default: the checkpoint)")
    evaluate.add_argument("--index", type=Path, help="an Int8Index file to check against the checkpoint's dim")
    evaluate.add_argument("--zero-shot", action="store_true", help="also score the untrained encoder (baseline)")
    evaluate.set_defaults(func=cmd_eval)

