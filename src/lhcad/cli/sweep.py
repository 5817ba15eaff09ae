"""``lhcad-sweep``: N independent workers on one Optuna study, no batch barrier.

    lhcad-sweep --workers 4 --n-trials 40 hparams_search=ae_optuna tracking=postgres signal_frac=0.01

Every argument after the options is a ``train.py`` override; an ``hparams_search=*`` override gives
the search space, sampler, objective and study (name, storage: ``tracking.optuna_storage``, which
``tracking=postgres`` points at PostgreSQL). ``lhcad-sweep`` creates the study if needed, starts N
worker processes (each ``train.py -m`` with :class:`~lhcad.tracking.optuna_worker.OptunaWorkerSweeper`,
in ``<sweep dir>/<study>-w<i>``, its output prefixed ``[w<i>]``) and waits until the study has
``--n-trials`` COMPLETE trials (default: the config's ``hydra.sweeper.n_trials``). A worker that
dies is reported; its trial is marked FAIL by the others after ``--grace`` seconds and run again
(``--retries``, 0 = skip it). Ctrl-C / SIGTERM stops the workers (their runs end KILLED). Workers
do not each log a comparison of their share of the trials into their parent run (``--comparison``
turns that on); ``lhcad-report`` compares the whole study (docs/cluster.md).

On a cluster, run ``lhcad-sweep --workers 1 ...`` in each task of a SLURM job array (or N on one
node); all join the same study (docs/cluster.md). Exit status: 0 when the study has its trials,
1 when it does not (a worker failed), 2 for a bad command line, 128 + n after signal n.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("lhcad.sweep")

WORKER_TARGET = "lhcad.tracking.optuna_worker.OptunaWorkerSweeper"


class UsageError(Exception):
    """A bad command line: one sentence, exit status 2."""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="lhcad-sweep",
        description="N independent workers on one Optuna study (no batch barrier).",
        epilog="Overrides are train.py overrides and must include hparams_search=<name>, e.g. "
        "lhcad-sweep --workers 4 hparams_search=ae_optuna tracking=postgres",
    )
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    p.add_argument("--n-trials", type=int, default=None,
                   help="COMPLETE trials the study should have (default: hydra.sweeper.n_trials)")
    p.add_argument("--retries", type=int, default=1,
                   help="re-runs of a trial whose worker died, same parameters (0: skip it; default 1)")
    p.add_argument("--heartbeat", type=int, default=30, help="Optuna heartbeat interval, seconds (default 30)")
    p.add_argument("--grace", type=int, default=120,
                   help="seconds without heartbeat after which a trial counts as dead (default 120)")
    p.add_argument("--poll", type=float, default=5.0,
                   help="seconds between looks at the study while others finish the last trials (default 5)")
    p.add_argument("--comparison", action="store_true",
                   help="let each worker log the cross-run comparison into its parent run (off: the workers' "
                        "comparisons would each cover a part of the study; lhcad-report covers all of it)")
    p.add_argument("overrides", nargs="*", help="train.py overrides (hparams_search=... required)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.n_trials is not None and args.n_trials < 1:
        p.error("--n-trials must be at least 1")
    if args.retries < 0 or args.heartbeat < 1 or args.grace < 1 or args.poll <= 0:
        p.error("--retries must be >= 0, --heartbeat, --grace and --poll positive")
    return args


def _compose(overrides: list[str]) -> Any:
    """The composed config (Hydra config included) of ``overrides``, without sweep overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from lhcad.config import register_resolvers
    from lhcad.paths import CONF_DIR

    register_resolvers()
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(str(CONF_DIR), job_name="train"):
        cfg = compose("config", overrides=plain, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def _study_settings(cfg: Any, n_trials: int | None) -> dict[str, Any]:
    from omegaconf import OmegaConf

    sweeper = cfg.hydra.sweeper
    if not OmegaConf.select(sweeper, "params") or "optuna" not in str(OmegaConf.select(sweeper, "_target_", default="")).lower():
        raise UsageError("lhcad-sweep needs an Optuna search: add hparams_search=<name> (conf/hparams_search/)")
    storage, study_name = OmegaConf.select(sweeper, "storage"), OmegaConf.select(sweeper, "study_name")
    if not storage or not study_name:
        raise UsageError("the search has no hydra.sweeper.storage / study_name; set tracking.optuna_storage")
    direction = OmegaConf.to_container(sweeper.direction, resolve=True) if OmegaConf.is_config(sweeper.direction) else sweeper.direction
    directions = [str(d) for d in direction] if isinstance(direction, list) else [str(direction)]
    return {
        "storage": str(storage),
        "study_name": str(study_name),
        "directions": directions,
        "n_trials": int(n_trials if n_trials is not None else sweeper.n_trials),
        "sweep_dir": Path(str(cfg.hydra.sweep.dir)),
        "callbacks": sorted(OmegaConf.select(cfg, "hydra.callbacks", default={}) or {}),
    }


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when lhcad-sweep dies (Linux prctl PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def worker_command(i: int, args: argparse.Namespace, settings: dict[str, Any]) -> list[str]:
    """The ``train.py -m`` command line of worker ``i``."""
    safe = re.sub(r"[^\w.\-]", "_", settings["study_name"])
    worker = (f"{{index:{i},heartbeat_s:{args.heartbeat},grace_s:{args.grace},"
              f"retries:{args.retries},poll_s:{args.poll}}}")
    own = [o for o in args.overrides if not o.startswith("hydra.sweep.dir=")]  # composed into sweep_dir
    if not args.comparison and "comparison" in settings["callbacks"]:
        own.append("~hydra.callbacks.comparison")
    return [sys.executable, "-m", "lhcad.cli.train", "-m", *own,
            f"hydra.sweeper._target_={WORKER_TARGET}", f"hydra.sweeper.n_trials={settings['n_trials']}",
            f"+hydra.sweeper.worker={worker}", f"hydra.sweep.dir={settings['sweep_dir'] / f'{safe}-w{i}'}"]


def _pump(prefix: str, stream: Any) -> None:
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix} {line}")
        sys.stdout.flush()
    stream.close()


def _summary(settings: dict[str, Any]) -> tuple[int, str]:
    """(COMPLETE trials, one line on the study)."""
    from collections import Counter

    from lhcad.tracking.optuna_worker import open_study
    from lhcad.tracking.store import redact_uri

    study = open_study(settings["storage"], settings["study_name"], settings["directions"])
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    line = f"study {study.study_name} ({redact_uri(settings['storage'])}): " + ", ".join(
        f"{n} {s}" for s, n in sorted(states.items()))
    if states["COMPLETE"] and len(settings["directions"]) == 1:
        best = study.best_trial
        line += f"; best value {best.value:.6g} (trial {best.number}: {best.params})"
    return states["COMPLETE"], line


def run(args: argparse.Namespace) -> int:
    """Create the study, run the workers, report; returns the exit status."""
    from lhcad.tracking.optuna_worker import open_study
    from lhcad.tracking.store import redact_uri

    settings = _study_settings(_compose(args.overrides), args.n_trials)
    if settings["storage"].startswith("sqlite") and args.workers > 1:
        log.warning("%d workers on a sqlite study: fine on one machine, not on a cluster (tracking=postgres)",
                    args.workers)
    open_study(settings["storage"], settings["study_name"], settings["directions"])  # tables + study, once
    log.info("study %s in %s: %d workers until %d COMPLETE trials", settings["study_name"],
             redact_uri(settings["storage"]), args.workers, settings["n_trials"])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[subprocess.Popen[str]] = []
    stop: list[int] = []

    def forward(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(args.workers):  # all started before any thread: preexec_fn and threads do not mix
            if stop:
                break
            procs.append(subprocess.Popen(worker_command(i, args, settings), stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=_die_with_parent))
            log.info("worker %d: pid %d", i, procs[-1].pid)
        pumps = [threading.Thread(target=_pump, args=(f"[w{i}]", p.stdout), daemon=True) for i, p in enumerate(procs)]
        for pump in pumps:
            pump.start()
        codes = [p.wait() for p in procs]
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for pump in pumps:
        pump.join(timeout=5)
    for i, (proc, code) in enumerate(zip(procs, codes)):
        if code < 0:
            log.warning("worker %d (pid %d) was killed by %s; its trial is marked FAIL by the others after "
                        "--grace %d s%s", i, proc.pid, signal.Signals(-code).name, args.grace,
                        " and run again" if args.retries else "")
        elif code != 0:
            log.warning("worker %d (pid %d) exited with status %d (its log is above, prefixed [w%d])", i, proc.pid, code, i)
    complete, line = _summary(settings)
    log.info("%s", line)
    if stop:
        return 128 + stop[0]
    if complete < settings["n_trials"]:
        log.error("the study has %d of %d COMPLETE trials; rerun the same command to continue it",
                  complete, settings["n_trials"])
        return 1
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s lhcad-sweep] %(message)s",
                        datefmt="%H:%M:%S")
    args = _parse(argv)
    try:
        code = run(args)
    except UsageError as err:
        log.error("%s", err)
        code = 2
    except Exception as err:  # noqa: BLE001 - composition errors etc.: one line
        from hydra.errors import HydraException

        if not isinstance(err, HydraException):
            raise
        log.error("%s", err)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
