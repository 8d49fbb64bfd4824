"""The typed records a job stores keep every metric adapters.evaluate returns, as it returns them."""

from __future__ import annotations

import torch

from adapters.evaluate import category_metrics, retrieval_metrics
from service.progress import HeldOutComparison, Progress, StoredMetrics


def test_stored_metrics_and_progress_keep_every_key_and_value():
    text, images = torch.eye(4), torch.eye(4)
    plain = retrieval_metrics(text, images, torch.arange(4))
    with_categories = {**plain, **category_metrics(text, images, ["a", "a", "b", None], ["a", "a", "b", "b"])}
    stored = StoredMetrics(test=with_categories, test_zero_shot=plain).model_dump(mode="json")
    assert stored["test"] == with_categories
    assert stored["test_zero_shot"] == plain
    comparison = HeldOutComparison(adapter=with_categories, zero_shot=plain, baseline=plain, baseline_name="none")
    assert comparison.model_dump(mode="json")["adapter"] == with_categories
    update = Progress(val=plain, val_zero_shot=with_categories).as_update()
    assert update == {"val": plain, "val_zero_shot": with_categories}
