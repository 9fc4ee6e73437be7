"""Command line: ``cryoclass classify | simulate | config | info``.

This is the only module that names ``MPI.COMM_WORLD`` and configures logging
(console on rank 0, one log file per rank in the run directory).

Examples
--------
    cryoclass simulate demo_data --n 3000
    mpiexec -n 2 cryoclass classify demo_data/particles.star --classes 12 --out demo_run
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from cryoclass import __version__
from cryoclass.errors import CryoclassError, InputError

logger = logging.getLogger("cryoclass")


# ------------------------------------------------------------------------- MPI / logs
def world():
    """Return the world communicator as a :class:`Comm` (a one-rank stand-in without MPI)."""
    from cryoclass.parallel.comm import Comm

    if os.environ.get("CRYOCLASS_NO_MPI"):
        return Comm(None)
    try:
        from mpi4py import MPI
    except ImportError:
        return Comm(None)
    return Comm(MPI.COMM_WORLD)


def local_rank(comm) -> int:
    """Rank of this process among the ranks on its node."""
    if comm.mpi is None:
        return 0
    from mpi4py import MPI

    return comm.mpi.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()


def setup_logging(rank: int, verbosity: int, logdir: Path | None = None) -> None:
    """Console handler on rank 0 (warnings elsewhere); a log file per rank in ``logdir``."""
    root = logging.getLogger("cryoclass")
    root.setLevel(logging.DEBUG)
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    level = logging.INFO if verbosity == 0 else (logging.DEBUG if verbosity > 0
                                                 else logging.WARNING)
    console.setLevel(level if rank == 0 else logging.WARNING)
    console.setFormatter(logging.Formatter(
        "%(asctime)s %(message)s" if rank == 0 else f"[rank {rank}] %(message)s",
        "%H:%M:%S"))
    root.addHandler(console)
    if logdir is not None:
        try:
            logdir.mkdir(parents=True, exist_ok=True)
            fh = _QuietFileHandler(logdir / f"rank{rank:04d}.log")
            fh.setLevel(logging.DEBUG)
            fh.setFormatter(logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root.addHandler(fh)
            if rank == 0:
                ev = _QuietFileHandler(logdir.parent / "events.log")
                ev.setLevel(logging.INFO)
                ev.setFormatter(logging.Formatter("%(asctime)s %(message)s",
                                                  "%Y-%m-%d %H:%M:%S"))
                root.addHandler(ev)
        except OSError as exc:  # the outputs will report it; the console still logs
            root.debug("no log files in %s: %s", logdir, exc)


class _QuietFileHandler(logging.FileHandler):
    """A log file that falls silent when it cannot be written (a full disk).

    logging's default prints a traceback to stderr for every record it fails to write;
    the output writers report the problem once instead.
    """

    def handleError(self, record) -> None:  # noqa: N802 (logging's name)
        self.setLevel(logging.CRITICAL + 1)


# ------------------------------------------------------------------------- arguments
_FLAG_MAP = {  # common flags -> config keys
    "classes": "classify.n_classes", "max_res": "classify.max_res_A",
    "max_align_res": "classify.max_align_res_A", "min_align_res": "classify.min_align_res_A",
    "uncertainty": "classify.uncertainty_factor", "online_iters": "classify.online_em_iters",
    "batch_per_class": "classify.batch_size_per_class",
    "final_iters": "classify.final_full_iters", "seed": "classify.seed",
    "mask_diameter": "mask.inner_diameter_A", "mask_diameter_outer": "mask.outer_diameter_A",
    "psi_step": "search.psi_step_deg", "shift_range": "search.shift_range_A",
    "backend": "compute.backend", "min_separation": "duplicates.min_separation_A",
    "scratch": "compute.scratch_dir", "devices": "compute.devices",
    "particle_diameter": "preprocess.particle_diameter_A",
    "marginalize": "classify.marginalize_poses",
}
_SWITCHES = {  # store_true flags -> (config key, value)
    "no_force_max": ("classify.force_max", False), "no_ctf": ("ctf.correct", False),
    "phase_flip_only": ("ctf.phase_flip_only", True), "hard": ("classify.hard_classification",
                                                              True),
    "no_mask": ("mask.enabled", False), "no_recenter": ("recenter.enabled", False),
    "filaments": ("constraints.align_filaments_vertically", True),
    "non_negative": ("constraints.non_negativity", True),
    "clamp_solvent": ("constraints.clamp_solvent", True),
    "white_noise": ("classify.white_noise", True),
    "no_frc_regularization": ("classify.frc_regularization", False),
    "no_sort": ("classify.sort_by_size", False), "no_progress": ("output.progress", False),
    "no_plots": ("output.plots", False), "exhaustive": ("search.mode", "exhaustive"),
}


def _config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configuration (defaults as CryoSPARC; see configs/default.toml)")
    g.add_argument("--config", metavar="TOML", help="configuration file")
    g.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[],
                   help="override any config value, e.g. --set search.psi_step_deg=5")
    g.add_argument("--classes", "-K", type=int, help="number of classes K (default 50)")
    g.add_argument("--max-res", type=float, metavar="A",
                   help="maximum resolution in Å for alignment and averaging (default 6)")
    g.add_argument("--max-align-res", type=float, metavar="A",
                   help="align at this resolution (Å), average at --max-res")
    g.add_argument("--min-align-res", type=float, metavar="A",
                   help="high-pass during alignment (Å), e.g. 40-60 against micelles")
    g.add_argument("--uncertainty", type=float, metavar="F",
                   help="initial classification uncertainty factor (default 2; 1 when "
                        "marginalizing over every pose)")
    g.add_argument("--online-iters", type=int, metavar="N",
                   help="online-EM iterations (default 20)")
    g.add_argument("--batch-per-class", type=int, metavar="N",
                   help="particles per class per online-EM iteration (default 100)")
    g.add_argument("--final-iters", type=int, metavar="N",
                   help="final full iterations over all particles (default 3)")
    g.add_argument("--no-force-max", action="store_true",
                   help="marginalize over poses instead of using the best pose")
    g.add_argument("--exhaustive", action="store_true",
                   help="search every pose on the fine grid (several times slower); with "
                        "--no-force-max this marginalizes over all poses, as RELION does: "
                        "for very low SNR (about 0.02)")
    g.add_argument("--marginalize", choices=["auto", "always", "never"],
                   help="marginalize over every pose (as --no-force-max --exhaustive): "
                        "always (every iteration), never, or auto (default): in the "
                        "online-EM iterations when the particles' measured information "
                        "at 20 Å is low (the event log prints it)")
    g.add_argument("--no-ctf", action="store_true",
                   help="no CTF correction (pre-corrected or negative-stain data)")
    g.add_argument("--phase-flip-only", action="store_true", help="correct CTF phases only")
    g.add_argument("--hard", action="store_true",
                   help="final iteration: each particle only in its best class")
    g.add_argument("--no-mask", action="store_true", help="no circular mask on classes")
    g.add_argument("--mask-diameter", type=float, metavar="A",
                   help="circular mask diameter in Å (default: the box)")
    g.add_argument("--mask-diameter-outer", type=float, metavar="A",
                   help="outer diameter of the mask's soft edge (default 1.2 x inner)")
    g.add_argument("--particle-diameter", type=float, metavar="A",
                   help="particle diameter for background normalization (Å)")
    g.add_argument("--no-recenter", action="store_true", help="do not re-center classes")
    g.add_argument("--filaments", action="store_true",
                   help="align filament classes vertically")
    g.add_argument("--non-negative", action="store_true", help="enforce non-negativity")
    g.add_argument("--clamp-solvent", action="store_true", help="clamp solvent to zero")
    g.add_argument("--white-noise", action="store_true", help="force a white noise model")
    g.add_argument("--no-frc-regularization", action="store_true",
                   help="plain CTF-weighted averages (no FRC-based Wiener prior)")
    g.add_argument("--no-sort", action="store_true", help="do not sort classes by size")
    dup = g.add_mutually_exclusive_group()
    dup.add_argument("--remove-duplicates", dest="remove_duplicates", action="store_true",
                     default=None, help="remove duplicate picks (needs locations)")
    dup.add_argument("--keep-duplicates", dest="remove_duplicates", action="store_false",
                     help="do not remove duplicate picks")
    g.add_argument("--min-separation", type=float, metavar="A",
                   help="duplicate minimum separation in Å (default 20)")
    g.add_argument("--psi-step", type=float, metavar="DEG", help="rotation step (deg)")
    g.add_argument("--shift-range", type=float, metavar="A", help="translation range (Å)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--backend", choices=["auto", "numpy", "cupy"], help="array backend")
    g.add_argument("--devices", metavar="IDS",
                   help="comma-separated GPU ids; each rank takes one by its rank on the "
                        "node (default: all visible devices)")
    g.add_argument("--scratch", metavar="DIR",
                   help="keep preprocessed particles in a file per rank in DIR "
                        "(node-local SSD), read back per chunk, instead of RAM")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--no-plots", action="store_true", help="no per-iteration figures")


def resolve_config(args):
    """Config from --config, the common flags and --set (in that order)."""
    from cryoclass.config import load_config

    overrides = []
    for name, key in _FLAG_MAP.items():
        val = getattr(args, name, None)
        if val is not None:
            overrides.append(f"{key}={val!r}" if isinstance(val, str) else f"{key}={val}")
    for name, (key, value) in _SWITCHES.items():
        if getattr(args, name, False):
            text = repr(value) if isinstance(value, str) else ("true" if value else "false")
            overrides.append(f"{key}={text}")
    rd = getattr(args, "remove_duplicates", None)
    if rd is not None:
        overrides.append(f"duplicates.remove={'true' if rd else 'false'}")
    overrides.extend(args.set or [])
    return load_config(getattr(args, "config", None), overrides)


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of every subcommand."""
    p = argparse.ArgumentParser(
        prog="cryoclass",
        description="MPI-parallel cryo-EM 2D classification. Run under mpiexec/srun for "
                    "many ranks (one GPU or CPU share each).",
        epilog="Example: mpiexec -n 2 cryoclass classify particles.star --classes 50 --out run")
    p.add_argument("--version", action="version", version=f"cryoclass {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("classify", help="2D classification of a particle set",
                       description="Group particles into K classes with in-plane alignment "
                                   "(CTF-aware); writes run.h5, particles.star/.cs and "
                                   "class_averages.mrcs into --out.")
    c.add_argument("particles", help="particles: RELION .star or CryoSPARC .cs")
    c.add_argument("--out", "-o", required=True, metavar="DIR", help="run directory")
    c.add_argument("--project-dir", metavar="DIR",
                   help="CryoSPARC project directory for relative blob/path entries")
    c.add_argument("--validate-only", action="store_true",
                   help="check the inputs and config, then stop")
    c.add_argument("--resume", action="store_true",
                   help="continue from the run directory's checkpoint (start fresh if none)")
    _config_args(c)
    c.set_defaults(func=cmd_classify)

    s = sub.add_parser("simulate", help="write a synthetic dataset with known truth",
                       description="Simulate particles (phantoms, CTF, coloured noise, junk, "
                                   "duplicate picks) with a truth file.")
    s.add_argument("outdir", help="output folder")
    try:
        from cryoclass.simulation import add_arguments
    except ImportError:  # pragma: no cover - simulator missing
        add_arguments = None
    if add_arguments is not None:
        add_arguments(s)
    s.set_defaults(func=cmd_simulate)

    r = sub.add_parser("resume", help="continue an interrupted run",
                       description="Continue RUN from its checkpoint with its saved config.")
    r.add_argument("run", help="run directory")
    r.add_argument("--backend", choices=["auto", "numpy", "cupy"], default=None)
    r.set_defaults(func=cmd_resume)

    b = sub.add_parser("bench", help="measure throughput per phase against the GEMM peak",
                       description="Synthetic particles in memory; one warm-up and one "
                                   "measured iteration over all of them.")
    b.add_argument("--n", type=int, default=2000, help="particles (default 2000)")
    b.add_argument("--box", type=int, default=64, help="box size in px (default 64)")
    b.add_argument("--pixel-size", type=float, default=3.0, help="Å/px (default 3.0)")
    b.add_argument("--classes", "-K", type=int, default=50, help="classes (default 50)")
    b.add_argument("--max-res", type=float, default=None, metavar="A",
                   help="maximum resolution in Å (default 6)")
    b.add_argument("--psi-step", type=float, default=None, metavar="DEG")
    b.add_argument("--mode", choices=["coarse_to_fine", "exhaustive"], default=None)
    b.add_argument("--no-force-max", action="store_true")
    b.add_argument("--backend", choices=["auto", "numpy", "cupy"], default="auto")
    b.add_argument("--set", metavar="SECTION.KEY=VALUE", action="append", default=[])
    b.add_argument("--levels", metavar="A,A,...", default=None,
                   help="alignment resolutions (Å) to time one full E-step at (default: "
                        "the first automatic level to the finest, 4 levels)")
    b.add_argument("--json", metavar="FILE", help="also write the numbers as JSON")
    b.set_defaults(func=cmd_bench)

    ev = sub.add_parser("evaluate", help="score a classified STAR against a simulator truth",
                        description="Compare classes and psi of any classified STAR file "
                                    "(cryoclass or RELION) with cryoclass simulate's truth.h5.")
    ev.add_argument("truth", help="truth.h5 written by cryoclass simulate")
    ev.add_argument("star", help="classified particles (particles.star, RELION _data.star)")
    ev.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    ev.add_argument("--classes", metavar="MRCS",
                    help="class averages, class j = image j (default: class_averages.mrcs "
                         "beside STAR, or RELION's run_itNNN_classes.mrcs)")
    ev.add_argument("--lowpass", type=float, default=15.0, metavar="A",
                    help="low-pass of class averages and true projections before their NCC "
                         "(Å, default 15)")
    ev.set_defaults(func=lambda a, comm: (__import__("cryoclass.evaluate").evaluate
                                          .main_evaluate(a.truth, a.star, a.json, a.classes,
                                                         a.lowpass)
                                          if comm.rank == 0 else 0))

    sl = sub.add_parser("select", help="keep or drop classes of a finished run; write the subset",
                        description="Choose classes of a finished run (by number, thresholds "
                                    "or --auto) and write the chosen particles as STAR and .cs "
                                    "plus their class averages into RUN/select (or --out).")
    from cryoclass.select import add_arguments as add_select_arguments

    add_select_arguments(sl)
    sl.set_defaults(func=cmd_select)

    rp = sub.add_parser("report", help="(re)build RUN/report.html, also for an interrupted run")
    rp.add_argument("run", help="run directory")
    rp.set_defaults(func=cmd_report)

    cf = sub.add_parser("config", help="print the resolved configuration as TOML")
    _config_args(cf)
    cf.set_defaults(func=cmd_config)

    i = sub.add_parser("info", help="ranks, nodes, MPI library, backend and devices")
    i.add_argument("--backend", choices=["auto", "numpy", "cupy"], default="auto")
    i.add_argument("--devices", metavar="IDS", default="",
                   help="comma-separated GPU ids (as for classify)")
    i.set_defaults(func=cmd_info)
    return p


# --------------------------------------------------------------------------- commands
def cmd_config(args, comm) -> int:
    """Print the resolved configuration."""
    from cryoclass.config import to_toml

    cfg = resolve_config(args)
    if comm.rank == 0:
        sys.stdout.write(to_toml(cfg))
    return 0


def parse_devices(text: str) -> list[int] | None:
    """GPU ids from ``"0,2,3"`` (None for all visible devices)."""
    try:
        return [int(d) for d in str(text).split(",") if d.strip()] or None
    except ValueError:
        raise InputError(f"--devices {text!r}: give comma-separated GPU ids, e.g. 0,1") \
            from None


def cmd_info(args, comm) -> int:
    """Describe the parallel environment."""
    from cryoclass.backend import cupy_available, select_device

    lr = local_rank(comm)
    dev = select_device(lr, parse_devices(args.devices)) if args.backend != "numpy" else None
    import platform

    row = (comm.rank, platform.node(), lr, dev)
    rows = comm.gather(row)
    if comm.rank == 0:
        lib = "none (single process)"
        if comm.mpi is not None:
            from mpi4py import MPI

            lib = MPI.Get_library_version().splitlines()[0].strip()
        aware = "yes" if comm.gpu_aware else "no (GPU buffers are staged through the host)"
        nodes = sorted({r[1] for r in rows})
        print(f"cryoclass {__version__}")
        print(f"ranks: {comm.size} on {len(nodes)} node(s): {', '.join(nodes)}")
        print(f"MPI library: {lib}")
        print(f"backend: {'cupy' if cupy_available() and args.backend != 'numpy' else 'numpy'}")
        print(f"GPU-aware MPI: {aware}")
        for r in rows:
            print(f"  rank {r[0]}: node {r[1]}, local rank {r[2]}, "
                  f"device {'cpu' if r[3] is None else f'cuda:{r[3]}'}")
    return 0


def cmd_simulate(args, comm) -> int:
    """Write a simulated dataset (rank 0 only)."""
    from cryoclass.io.paths import on_root, prepare_output_dir
    from cryoclass.simulation import params_from_args, simulate_dataset

    params = params_from_args(args)
    prepare_output_dir(args.outdir, comm, option="simulate")
    star = on_root(comm, lambda: simulate_dataset(Path(args.outdir), params))
    if comm.rank == 0:
        logger.info("simulated dataset written: %s", star)
    return 0


def _load_inputs(args, cfg, comm):
    """Every rank reads and checks its own slice of the particle set (collective).

    Rank 0 indexes the file; no rank holds the whole table. An input error found on any
    rank is raised on every rank, so the job stops before iteration 1 with one message.
    """
    from cryoclass.io.particles import load_particles

    table = load_particles(args.particles, ctf=cfg.ctf.correct, project_dir=args.project_dir,
                           check_images=True, comm=comm)
    if cfg.output.micrograph_nx_px:  # for .cs location/* when the micrographs are missing
        table.micrograph_shape_px = (cfg.output.micrograph_ny_px, cfg.output.micrograph_nx_px)
    check_table(table, cfg)
    return table


def check_table(table, cfg) -> None:
    """Check what needs both the particles and the config (same outcome on every rank)."""
    n = table.n_total
    k = cfg.classify.n_classes
    if n == 0:
        raise InputError(f"{table.source_path}: no particles")
    if k > n:
        raise InputError(f"{k} classes requested but {table.source_path} has only {n} "
                         "particles: use --classes <= the number of particles")
    lo, hi = table.pixel_size_range_A
    if hi - lo > 1e-3 * table.pixel_size_A:
        raise InputError(f"{table.source_path}: particles have different pixel sizes "
                         f"({lo:.4f}-{hi:.4f} Å); classify each set separately")
    if cfg.duplicates.remove is True and not table.has_locations:
        raise InputError(f"{table.source_path}: duplicate removal needs rlnMicrographName "
                         "and rlnCoordinateX/Y (or location/* in .cs): run with "
                         "--keep-duplicates")


def cmd_bench(args, comm) -> int:
    """Run the benchmark and print the table (rank 0)."""
    from cryoclass.backend import get_namespace, select_device
    from cryoclass.bench import format_table, run_bench, write_json

    xp = get_namespace(args.backend)
    if xp.__name__ == "cupy":
        select_device(local_rank(comm))
    ov = list(args.set)
    if args.max_res is not None:
        ov.append(f"classify.max_res_A={args.max_res}")
    if args.psi_step is not None:
        ov.append(f"search.psi_step_deg={args.psi_step}")
    if args.mode is not None:
        ov.append(f"search.mode={args.mode}")
    if args.no_force_max:
        ov.append("classify.force_max=false")
    levels = None
    if args.levels:
        try:
            levels = [float(v) for v in args.levels.split(",") if v.strip()]
        except ValueError:
            raise InputError(f"--levels: expected comma-separated Å values, got "
                             f"{args.levels!r}") from None
        if not levels or min(levels) <= 0:
            raise InputError(f"--levels: resolutions must be > 0 Å, got {args.levels!r}")
    r = run_bench(comm, xp, n=args.n, box_px=args.box, pixel_size_A=args.pixel_size,
                  n_classes=args.classes, overrides=ov, levels=levels)
    if comm.rank == 0:
        print(format_table(r))
        if args.json:
            write_json(Path(args.json), r)
    return 0


def cmd_select(args, comm) -> int:
    """Select classes of a finished run (rank 0: reads run.h5, writes the subset)."""
    if comm.rank != 0:
        return 0
    from cryoclass.io.paths import output_error
    from cryoclass.select import main_select

    try:
        return main_select(args)
    except OSError as exc:  # the selection files are written atomically: none half-written
        raise output_error(None, exc) from None


def cmd_report(args, comm) -> int:
    """Build the HTML report of a run directory (rank 0)."""
    if comm.rank != 0:
        return 0
    from cryoclass.report import main_report

    return main_report(args.run)


def cmd_resume(args, comm) -> int:
    """Continue a run from its checkpoint with its own config and input."""
    from cryoclass.config import load_config
    from cryoclass.io.checkpoint import load_checkpoint

    run = Path(args.run)
    _, attrs = load_checkpoint(run / "checkpoint.h5")
    ns = argparse.Namespace(
        particles=str(attrs["input"]), out=str(run), project_dir=None, validate_only=False,
        resume=True, quiet=args.quiet, verbose=args.verbose)
    cfg = load_config(mapping=__import__("tomllib").loads(str(attrs["config_toml"])))
    if args.backend:
        from dataclasses import replace

        cfg = replace(cfg, compute=replace(cfg.compute, backend=args.backend))
    return run_classify(ns, cfg, comm)


class _StopFlag:
    """Set by SIGTERM/SIGUSR1 (batch-system time limits); polled between iterations."""

    def __init__(self):
        self.signal = None

    def install(self) -> None:
        import signal

        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                signal.signal(sig, self._handler)
            except (ValueError, OSError):  # not the main thread / unsupported
                pass

    def _handler(self, signum, frame) -> None:
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None


def log_peak_memory(comm) -> list[float]:
    """Log every rank's peak resident memory (MB) on rank 0; returns the list there."""
    from cryoclass.resources import peak_rss_mb, rss_now_mb

    now = rss_now_mb()  # anonymous (heap) vs file-backed (mapped stacks, libraries), now
    rows = comm.gather((peak_rss_mb(), now["RssAnon"], now["RssFile"]))
    if comm.rank == 0:
        logger.info("peak memory per rank (MB): %s; at the end, anonymous / file-backed "
                    "(MB): %s", ", ".join(f"{r[0]:.0f}" for r in rows),
                    ", ".join(f"{r[1]:.0f}/{r[2]:.0f}" for r in rows))
    return [r[0] for r in rows] if rows else []


def cmd_classify(args, comm) -> int:
    """Run the classification."""
    return run_classify(args, resolve_config(args), comm)


def run_classify(args, cfg, comm) -> int:
    """Load, classify (resuming when asked), write outputs."""
    from cryoclass.backend import get_namespace, select_device
    from cryoclass.em import StopRequested, classify
    from cryoclass.io.checkpoint import load_checkpoint, save_checkpoint
    from cryoclass.io.paths import on_root, prepare_output_dir
    from cryoclass.outputs import provenance, write_outputs
    from cryoclass.resources import log_memory
    from cryoclass.screening import screen_particles

    outdir = Path(args.out)
    table = _load_inputs(args, cfg, comm)
    if args.validate_only:
        screened = screen_particles(table, cfg, comm)  # reads every image once
        if comm.rank == 0:
            print(f"{args.particles}: {table.n_total} particles, box {table.box_px} px, "
                  f"{table.pixel_size_A:.4f} Å/px, {screened.n_constant} constant images; "
                  "config OK")
        return 0
    prepare_output_dir(outdir, comm)  # a file in the way, no permission: one line, now
    setup_logging(comm.rank, -1 if args.quiet else args.verbose, outdir / "logs")
    screened = screen_particles(table, cfg, comm)  # constant images: stop, or leave out
    table = screened.table
    xp = get_namespace(cfg.compute.backend)
    if xp.__name__ == "cupy":
        select_device(local_rank(comm), parse_devices(cfg.compute.devices))
    log_memory("after reading the particle metadata")
    logger.info("cryoclass %s: %d particles from %s, %d classes, %d rank(s), backend %s",
                __version__, table.n_total, args.particles,
                cfg.classify.n_classes, comm.size,
                xp.__name__)
    ckpt = outdir / "checkpoint.h5"
    state = None
    if getattr(args, "resume", False):
        if ckpt.is_file():
            state, _ = load_checkpoint(ckpt, cfg)
            logger.info("resuming %s after iteration %d", outdir, state.iteration)
        else:
            logger.info("no checkpoint in %s: starting from the beginning", outdir)

    def make_diagnostics():
        from cryoclass.report import DiagnosticsWriter

        return DiagnosticsWriter(outdir, plots=cfg.output.plots)

    diag = on_root(comm, make_diagnostics)

    def on_iteration(st, geom, record, is_last):
        def write():  # rank 0; a full disk stops every rank with one line
            if cfg.output.checkpoint and not is_last:
                save_checkpoint(ckpt, st, cfg, args.particles)
            if diag is not None:
                diag(st, geom, record, is_last)
        on_root(comm, write)

    stop = _StopFlag()
    stop.install()
    t0 = time.perf_counter()
    try:
        try:
            result = classify(table, cfg, comm, xp, state=state, on_iteration=on_iteration,
                              should_stop=stop)
        finally:
            if diag is not None:
                diag.close()
        log_memory("after the iterations")
        prov = provenance(sys.argv, comm.size, xp.__name__, args.particles)
        write_outputs(outdir, table, result, cfg, prov, comm, screened=screened)
        log_memory("after writing the outputs")
        log_peak_memory(comm)
        from cryoclass.report import build_report

        report = on_root(comm, lambda: build_report(outdir))
        if comm.rank == 0:
            logger.info("done in %.1f s; outputs in %s (open %s)", time.perf_counter() - t0,
                        outdir, report)
    except StopRequested as exc:
        if comm.rank == 0:
            logger.warning("stopped by signal %s after iteration %d; checkpoint saved. "
                           "Continue with: cryoclass resume %s", stop.signal, exc.iteration,
                           outdir)
        return 75
    except CryoclassError as exc:
        if getattr(exc, "collective", False):  # raised on every rank: main prints it once
            raise
        # found by one rank mid-run: stop every rank
        where = f" (rank {comm.rank})" if comm.size > 1 else ""
        print(f"cryoclass: error{where}: {exc}", file=sys.stderr)
        logger.debug("rank %d failed", comm.rank, exc_info=True)
        comm.abort(exc.exit_code)
    comm.barrier()
    return 0


# ------------------------------------------------------------------------------ main
def limit_blas_threads() -> None:
    """Give each MPI rank its share of the node's cores for BLAS/OpenMP threads.

    Several ranks on one node each starting one BLAS thread per core oversubscribe the
    node badly. The local rank count comes from the launcher's environment (MPICH/Hydra,
    Open MPI, Slurm); explicit user settings are kept. Must run before NumPy is imported.
    """
    local = None
    for var in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE",
                "PMI_LOCAL_SIZE"):
        val = os.environ.get(var, "")
        if val.split("(")[0].isdigit():
            local = int(val.split("(")[0])
            break
    if not local or local <= 1:
        return
    threads = str(max(1, (os.cpu_count() or 1) // local))
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, threads)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cryoclass`` command."""
    limit_blas_threads()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    comm = world()
    setup_logging(comm.rank, -1 if args.quiet else args.verbose)
    try:
        return args.func(args, comm)
    except CryoclassError as exc:
        # Input/config errors are found identically on every rank (or broadcast by
        # rank 0 before any other collective), so every rank exits with the same code.
        if comm.rank == 0:
            print(f"cryoclass: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cryoclass: interrupted", file=sys.stderr)
        comm.abort(130)
        return 130
    except Exception as exc:  # a failure on one rank must stop all of them
        logger.exception("rank %d failed", comm.rank)
        print(f"cryoclass: error on rank {comm.rank}: {type(exc).__name__}: {exc}",
              file=sys.stderr)
        comm.abort(1)
        return 1
