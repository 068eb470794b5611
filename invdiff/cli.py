"""The ``invdiff`` command line: ``invdiff demo``, ``invdiff train-prior``, ``invdiff solvers`` (more plug in here).

Every command: ``--help``, ``--config FILE`` (JSON or ``key = value`` lines) with ``--set key=value`` overrides,
the resolved config saved next to the outputs, a progress bar on long work, and on bad input one clear message
and exit code 2.

Exit codes: 0 done; 1 some inputs (or benchmark rows) failed, the others were done; 2 bad usage, configuration or
input, found before anything was written; 3 the output disk is full (one message; outputs written so far are
complete, nothing partial is left; re-running the same command resumes).
"""
from __future__ import annotations

import argparse
import sys


def _demo(argv):
    from .demo import main as demo_main

    return demo_main(argv)


def _train_prior(argv):
    from .training.cli import train_prior_main

    return train_prior_main(argv)


def _reconstruct(argv):
    from .reconstruct import main as reconstruct_main

    return reconstruct_main(argv)


def _acquire(argv):
    from .acquire import main as acquire_main

    return acquire_main(argv)


def _bench(argv):
    from .bench.cli import main as bench_main

    return bench_main(argv)


def _evaluate(argv):
    from .datasets.cli import evaluate_main

    return evaluate_main(argv)


def _synth_fastmri(argv):
    from .datasets.cli import synth_fastmri_main

    return synth_fastmri_main(argv)


def _solvers(argv):
    """``invdiff solvers [NAME]``: the registered solvers, or one solver's options and measured defaults."""
    from .solvers.base import available, get
    from .solvers.defaults import table_for

    p = argparse.ArgumentParser(prog="invdiff solvers", description="List solvers, or the options of one solver "
                                "(type, accepted values, default, meaning) and its measured per-operator defaults.")
    p.add_argument("name", nargs="?", help="a solver name (omit to list all)")
    a = p.parse_args(argv)
    if a.name is None:
        for n in available():
            s = get(n)
            first = (s.doc.splitlines() or [""])[0]
            print(f"{n:<16} {'prior' if s.needs_prior else '-':<6} {len(s.options):>2} options  {first}"[:118])
        print("\n'invdiff solvers NAME' lists a solver's options; set them with --set solver.OPTION=VALUE "
              "(reconstruct) or --set NAME.OPTION=VALUE (bench).")
        return 0
    s = get(a.name)
    print(f"{s.name}: {(s.doc.splitlines() or [''])[0]}")
    print("options:" if s.options else "options: none")
    for o in s.options:
        print(f"  {o.name:<18} {o.type_name():<14} default {o.default!r:<12} {o.help}")
        print(f"  {'':<18} accepts {o.expected()}")
    rows = table_for(s.name)
    if rows:
        print("measured defaults (used when the option is not given; invdiff.solvers.defaults):")
        for r in rows:
            opts = ", ".join(f"{k}={v.__doc__.split(':')[0] if callable(v) else v!r}" for k, v in r.options.items())
            when = f" ({r.when.__doc__.strip()})" if r.when is not None else ""
            print(f"  {'/'.join(r.kinds) + when:<32} {opts}   [{r.source}]")
    return 0


COMMANDS = {
    "demo": (_demo, "run the embedded offline demo (MRI + CT + inpainting, metrics table, figure)"),
    "train-prior": (_train_prior, "train a diffusion prior (EDM denoising score matching, resumable)"),
    "reconstruct": (_reconstruct, "reconstruct files/folders (fastMRI h5, NIfTI/DICOM, sinograms, images); resumable"),
    "acquire": (_acquire, "active acquisition (ADS): which k-space lines / CT views / pixels the prior asks for"),
    "bench": (_bench, "benchmark solvers on standard tasks: results.json + CSV/markdown tables + PSNR-vs-NFE plot"),
    "evaluate": (_evaluate, "score fastMRI reconstructions by the fastMRI protocol (evaluate.py: NMSE, PSNR, SSIM)"),
    "synth-fastmri": (_synth_fastmri, "write synthetic fastMRI-format .h5 files (train/val/test style, offline)"),
    "solvers": (_solvers, "list the solvers, or one solver's options (type, range, default, meaning)"),
}


EXIT_DISK_FULL = 3


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="invdiff",
        description="Inverse problems in imaging with diffusion priors. Run 'invdiff COMMAND --help' for details.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {k:<12} {v[1]}" for k, v in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of: " + ", ".join(COMMANDS))
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    ns = parser.parse_args(argv[:1])
    fn = COMMANDS[ns.command][0]
    from .io_utils import DiskFullError, disk_full_error, is_disk_full

    try:
        return int(fn(argv[1:]) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        if not getattr(e, "echo_of_rank0", False):
            print(f"invdiff {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_disk_full(e):
            raise
        err = e if isinstance(e, DiskFullError) else disk_full_error(getattr(e, "filename", None) or "output", e)
        print(f"invdiff {ns.command}: error: {err.strerror}", file=sys.stderr)
        return EXIT_DISK_FULL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
