"""tools/train_imagenet.py --amp on the CPU: bfloat16 autocast end to end (teacher, scout, concrete)."""
import json

import train_imagenet
from test_train import run_dir, train_losses, write_config


def test_amp_runs_end_to_end_on_the_cpu(tmp_path):
    config = write_config(tmp_path, epochs=1, warmup_epochs=0, amp=True, max_train_images=64, max_val_images=16,
                          batch_size=8, total_batch_size=16)
    assert train_imagenet.main(["--config", str(config)]) == 0
    run = run_dir(tmp_path)
    for stage in ("teacher", "approx", "concrete/p_logit_0"):
        losses = train_losses(run / stage)
        assert losses and all(loss == loss and abs(loss) < 1e4 for loss in losses), stage
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rows"][1]["hard_top1"] >= 0
