"""Checkpoint hygiene: a save killed half-way leaves a temporary file, removed when the folder is next used."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from effdnn.data import load_data
from effdnn.train import Callback, TrainSpec, fit, load_checkpoint, save_atomic
from effdnn.train.checkpoint import remove_stale_temporaries
from effdnn.train.loop import CHECKPOINT

ROOT = Path(__file__).resolve().parents[2]


def _killed_save(path: Path) -> list[Path]:
    """Run save_atomic(path) in a child process that is SIGKILLed half-way through writing; the
    temporary files it leaves behind."""
    code = textwrap.dedent(f"""
        import os, signal, sys, torch
        from effdnn.train import save_atomic
        def dying_save(obj, f):
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
                fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_atomic({{"epoch": 9}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    return sorted(path.parent.glob(path.name + ".*.tmp"))


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> tuple[Path, list[Path], str, bytes]:
    """A folder where a save of last.pt (over epoch 1) was killed: (checkpoint, leftovers, the leftover's
    name after the checkpoint's, its contents). One child process for the whole module (starting
    Python with torch takes seconds)."""
    ckpt = tmp_path_factory.mktemp("killed") / "last.pt"
    save_atomic({"epoch": 1}, ckpt)
    stale = _killed_save(ckpt)
    assert stale
    return ckpt, stale, stale[0].name[len(ckpt.name):], stale[0].read_bytes()


def _leave_stale(ckpt: Path, killed: tuple[Path, list[Path], str, bytes]) -> list[Path]:
    """Put a copy of the killed save's temporary file next to ``ckpt`` (same name pattern and contents)."""
    dst = ckpt.parent / (ckpt.name + killed[2])
    dst.write_bytes(killed[3])
    return [dst]


def test_a_killed_save_leaves_the_old_checkpoint_and_its_temporary_is_removed_on_the_next_save(killed):
    ckpt, stale = killed[:2]
    folder = ckpt.parent
    assert len(stale) == 1 and stale[0].read_bytes() == b"half a checkpoint"  # what a kill leaves
    assert torch.load(ckpt, weights_only=True) == {"epoch": 1}  # the checkpoint itself is intact
    keep = [folder / n for n in ("last.pt.tmp", "other.pt.abcdefgh.tmp", "last.pt.abcdefgh.tmp.bak", "notes.txt",
                                 "last.pt.abc.tmp")]
    for f in keep:
        f.write_text("not ours")
    save_atomic({"epoch": 2}, ckpt)
    assert not stale[0].exists()
    assert all(f.exists() for f in keep)  # only save_atomic's own temporaries of this checkpoint
    assert load_checkpoint(ckpt) == {"epoch": 2}
    assert sorted(p.name for p in folder.iterdir()) == sorted(["last.pt"] + [f.name for f in keep])


def test_loading_a_checkpoint_removes_stale_temporaries(tmp_path, killed):
    ckpt = tmp_path / "model.pt"
    save_atomic({"w": torch.ones(2)}, ckpt)
    stale = _leave_stale(ckpt, killed)
    assert stale[0].exists()
    assert torch.equal(load_checkpoint(ckpt)["w"], torch.ones(2))
    assert not stale[0].exists()
    assert remove_stale_temporaries(tmp_path / "missing-folder" / "x.pt") == []  # no folder: nothing to do


class _StopAt(Callback):
    def on_epoch_start(self, model, epoch):
        if epoch == 1:
            raise KeyboardInterrupt


def test_resuming_training_cleans_the_checkpoint_folder(tmp_path, killed):
    data = load_data("synthetic", n_train=64, n_test=32)
    spec = TrainSpec(epochs=2)

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 4))

    with pytest.raises(KeyboardInterrupt):
        fit(model(), data.train, spec, batch_size=32, checkpoint_dir=tmp_path, callbacks=[_StopAt()], log=False)
    stale = _leave_stale(tmp_path / CHECKPOINT, killed)
    res = fit(model(), data.train, spec, batch_size=32, checkpoint_dir=tmp_path, resume=True, log=False)
    assert res.resumed_from == 1 and not stale[0].exists()
    assert os.listdir(tmp_path) == [CHECKPOINT]
