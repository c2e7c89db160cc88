"""The training plan (`train --dry-run` / `--preview`) and its warnings for degenerate runs."""

from __future__ import annotations

import json

from ftctl.lib.plan import describe, make_plan
from tests.train.conftest import configure
from tests.train.test_train import train

LORA = {"gradient_accumulation": 1, "warmup": 0.03, "scheduler": "cosine", "max_length": 1024, "packing": True}


def test_the_issue_run_is_warned_about_and_a_sane_plan_is_not():
    # issue 10: ~1,050 short conversations, 57 optimizer steps learned nothing
    lengths, trained = [60] * 1050, [4] * 1050
    few = make_plan(lengths, trained, batch_size=56, epochs=3, max_steps=None, **LORA)
    assert few.optimizer_steps == 57 and any("only 57 optimizer steps" in w for w in few.warnings)
    cut = make_plan(lengths, trained, batch_size=4, epochs=3, max_steps=120, **LORA)
    assert cut.epochs < 1 and any("LR schedule ends at step 120" in w for w in cut.warnings)
    assert any(line.startswith("warning: ") for line in describe(cut))

    sane = make_plan(lengths, trained, batch_size=16, epochs=3, max_steps=None, **LORA)
    assert sane.warnings == [] and not any(line.startswith("warning") for line in describe(sane))
    assert sane.optimizer_steps == 3 * 66 and sane.conversations_per_step == 16
    assert sane.tokens_per_step == 16 * 60 and sane.trained_tokens_per_step == 64
    assert sane.rows_per_step == 1  # 16 x 60 tokens fit one 1,024-token row
    assert sane.warmup_steps == 6 and sane.schedule_end_epoch == 3
    # gradient accumulation and processes multiply the conversations per step, not the steps
    ddp = make_plan(lengths, trained, batch_size=4, epochs=3, max_steps=None, processes=2,
                    **{**LORA, "gradient_accumulation": 2})
    assert ddp.conversations_per_step == 16 and ddp.optimizer_steps == sane.optimizer_steps


def test_dry_run_prints_the_plan_and_its_warnings(train_ws, ftctl):
    configure(train_ws, train_ws.config.base, max_steps=None, epochs=1, batch_size=4)
    plan = train(train_ws, dry_run=True)["plan"]
    # 30 conversations, 4 per step: 8 steps; far from the ~100 a task needs
    assert plan["optimizer_steps"] == 8 and plan["conversations"] == 30 and plan["conversations_per_step"] == 4
    assert plan["tokens_per_step"] > plan["trained_tokens_per_step"] > 0
    assert any("only 8 optimizer steps" in w for w in plan["warnings"])
    json.dumps(plan)  # what --json prints; test_packing checks these steps against real runs
    proc = ftctl("train", "--dry-run", cwd=train_ws.root)
    assert "plan: 8 optimizer steps" in proc.stdout and "warning: only 8 optimizer steps" in proc.stdout
