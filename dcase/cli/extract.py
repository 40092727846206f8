"""`dcase extract ...` commands: DAC codes, clip embeddings, checkpoint conversion, store checks."""

from __future__ import annotations

from pathlib import Path

import typer

from dcase.cli.common import user_errors
from dcase.errors import InputError

app = typer.Typer(no_args_is_help=True)


@app.command("codec")
@user_errors
def codec(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest parquet (dcase data manifest)."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store directory (created or resumed)."),
    codec_name: str = typer.Option(None, "--codec", help="DacModel directory (see convert-dac) or hub name."),
    codec_config: str = typer.Option(None, "--codec-config", help="Random weights: tiny | full | a config file."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Clips per batch (length-bucketed)."),
    chunk_seconds: float = typer.Option(10.0, "--chunk-seconds", help="Window length for long clips."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable clips (listed in skipped.json)."),
    splits: list[str] = typer.Option(None, "--splits", help="Only these splits (repeatable)."),
    workers: int = typer.Option(1, "--workers", help="CPU: batches encoded at once, one torch thread each."),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Write a shard every N clips ..."),
    flush_seconds: float = typer.Option(
        120.0, "--flush-seconds", min=0.001, help="... or every S seconds, whichever first (a kill loses at most S s)."
    ),
) -> None:
    """DAC codes (int16 [32, T], 75 frames/s) for every clip of a manifest.

    Example: dcase extract codec --manifest data/clotho.parquet --out feats/dac --codec models/dac_24khz

    Multi-GPU / multi-node: accelerate launch $(which dcase) extract codec ... (each process writes its own shards).
    """
    from dcase.features.extract import extract_codec

    if (codec_name is None) == (codec_config is None):
        raise InputError("give exactly one of --codec NAME|DIR or --codec-config tiny|full|FILE")
    rep = extract_codec(
        manifest,
        out,
        codec_name or codec_config,
        batch_size,
        skip_bad,
        splits or None,
        chunk_seconds,
        shard_size=shard_size,
        workers=workers,
        flush_seconds=flush_seconds,
    )
    typer.echo(
        f"{out}: {rep.encoded} clips encoded by this process, {rep.already_done} already present, "
        f"{len(rep.skipped)} skipped; {rep.audio_seconds / max(rep.wall_seconds, 1e-9):.1f} audio-s/s"
    )


@app.command("embed")
@user_errors
def embed(
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest parquet."),
    retriever: Path = typer.Option(..., "--retriever", "-r", help="Retriever or CNext directory, or CNext .pth."),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store directory."),
    batch_size: int = typer.Option(8, "--batch-size", "-b"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable clips (listed in skipped.json)."),
    splits: list[str] = typer.Option(None, "--splits", help="Only these splits (repeatable)."),
    shard_size: int = typer.Option(256, "--shard-size", min=1, help="Write a shard every N clips ..."),
    flush_seconds: float = typer.Option(
        120.0, "--flush-seconds", min=0.001, help="... or every S seconds, whichever first (a kill loses at most S s)."
    ),
) -> None:
    """One clip embedding per clip (EnCLAP's CLAP slot) from a retriever's audio tower or CNext.

    Example: dcase extract embed --manifest data/clotho.parquet --retriever runs/retriever/best --out feats/emb
    """
    from dcase.features.extract import extract_embeddings

    rep = extract_embeddings(
        manifest, out, retriever, batch_size, skip_bad, splits or None, shard_size, flush_seconds=flush_seconds
    )
    typer.echo(
        f"{out}: {rep.encoded} clips embedded by this process, {rep.already_done} already present, "
        f"{len(rep.skipped)} skipped"
    )


@app.command("convert-dac")
@user_errors
def convert_dac(
    pth: Path = typer.Argument(..., help="Descript checkpoint, e.g. weights_24khz_8kbps_0.0.4.pth"),
    out_dir: Path = typer.Argument(..., help="Output DacModel directory."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Convert Descript's DAC .pth into a transformers DacModel directory (weight norm folded).

    Example: dcase extract convert-dac weights_24khz_8kbps_0.0.4.pth models/dac_24khz
    """
    from dcase.features.codec import convert_descript_checkpoint
    from dcase.io import check_output

    check_output(out_dir, overwrite, kind="folder")
    typer.echo(str(convert_descript_checkpoint(pth, out_dir, overwrite=overwrite)))


@app.command("verify")
@user_errors
def verify(
    store: Path = typer.Argument(..., help="Feature store directory."),
    manifest: Path = typer.Option(..., "--manifest", "-m", help="Manifest the store must cover."),
) -> None:
    """Check that every manifest clip is in the store with the right shape and dtype, and no NaN.

    Example: dcase extract verify feats/dac --manifest data/clotho.parquet
    """
    from dcase.features.store import verify_store

    rep = verify_store(store, manifest)
    typer.echo(f"{store}: OK ({rep})")
