"""`dcase captioner ...` commands."""

from __future__ import annotations

import typer

from dcase.cli.common import CONFIG_OPTION, REPORT_TO_OPTION, SET_OPTION, user_errors, with_report_to

app = typer.Typer(no_args_is_help=True)


def _run(config: str | None, overrides: list[str] | None, init: str | None, mcm: bool, report_to: str | None) -> None:
    from dcase.stages.captioner import load_stage_config, train_captioner

    cfg = load_stage_config(config, with_report_to(overrides, report_to), init=init, mcm=mcm)
    best = train_captioner(cfg)
    typer.echo(f"best checkpoint: {best}")


@app.command()
@user_errors
def pretrain(
    config: str = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    init: str = typer.Option(None, "--init", help="Start from this EnCLAP checkpoint instead of model.*"),
    report_to: str = REPORT_TO_OPTION,
) -> None:
    """Pretrain EnCLAP with captioning + masked codec modelling (MCM on).

    Example: dcase captioner pretrain --config configs/dcase2024/captioner_pretrain.yaml
    --set train.output_dir=runs/enclap_pt --set train.batch_size=8

    Rerunning the same command resumes from train.output_dir/state.
    """
    _run(config, overrides, init, mcm=True, report_to=report_to)


@app.command()
@user_errors
def finetune(
    config: str = CONFIG_OPTION,
    overrides: list[str] = SET_OPTION,
    init: str = typer.Option(..., "--init", help="EnCLAP checkpoint to finetune (e.g. the pretraining's best)."),
    report_to: str = REPORT_TO_OPTION,
) -> None:
    """Finetune EnCLAP on Clotho development without MCM.

    Example: dcase captioner finetune --config configs/dcase2024/captioner_finetune.yaml
    --init runs/enclap_pt/checkpoints/step-040000

    Rerunning the same command resumes from train.output_dir/state.
    """
    _run(config, overrides, init, mcm=False, report_to=report_to)


@app.command()
@user_errors
def caption(
    checkpoint: str = typer.Argument(..., help="EnCLAP checkpoint directory."),
    manifest: str = typer.Option(..., "--manifest", help="Manifest of the clips to caption."),
    codec_store: list[str] = typer.Option(..., "--codec-store", help="Codec feature store(s), repeatable."),
    embed_store: list[str] = typer.Option(..., "--embed-store", help="Clip-embedding store(s), repeatable."),
    split: str = typer.Option(None, "--split", help="Only rows of this split."),
    out: str = typer.Option(..., "--out", help="Task 6 CSV to write (file_name,caption_predicted)."),
    num_beams: int = typer.Option(4, help="Beam size (1 = greedy)."),
    batch_size: int = typer.Option(16),
    score: bool = typer.Option(False, help="Also print METEOR / CIDEr-D against the manifest's captions."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out."),
) -> None:
    """Caption clips with beam search or greedy decoding (quick checks; use `dcase generate` for submissions).

    Example: dcase captioner caption runs/enclap_ft/last --manifest data/clotho/manifest.parquet
    --split evaluation --codec-store features/dac_clotho --embed-store features/emb_clotho --out caps.csv --score
    """
    from dcase.data.datasets import CaptionDataset
    from dcase.data.manifest import read_manifest
    from dcase.env import resolve_device
    from dcase.features.store import StoreChain, check_coverage
    from dcase.io import check_output
    from dcase.models.enclap import EnCLAP
    from dcase.stages.captioner import generate_captions
    from dcase.submission.formats import write_task6

    check_output(out, overwrite)

    model = EnCLAP.from_pretrained(checkpoint, device=resolve_device(None)).eval()
    df = read_manifest(manifest, [split] if split else None).reset_index(drop=True)
    codes, embeds = StoreChain.open(codec_store), StoreChain.open(embed_store)
    check_coverage(df, codes, embeds, manifest)
    mc = model.config
    ds = CaptionDataset(
        df, codes, embeds, mc.n_codebooks, mc.clip_dim, mc.max_codec_positions, random_crop=False, per_caption=False
    )
    texts = generate_captions(model, ds, batch_size, progress=True, num_beams=num_beams)
    # the Task 6 format (clip ids of folder manifests are file names), so that `dcase score captions` reads it
    write_task6(list(zip(df["clip_id"].astype(str), texts, strict=True)), out, overwrite=overwrite)
    typer.echo(f"wrote {len(texts)} captions to {out}")
    if score:
        from dcase.evaluation.captions import evaluate_captions

        keep = df["captions"].map(len) > 0
        scores = evaluate_captions(
            [t for t, k in zip(texts, keep, strict=True) if k],
            [list(c) for c in df["captions"][keep]],
            ["meteor", "cider_d"],
        )
        typer.echo({k: v for k, v in scores.items()})
