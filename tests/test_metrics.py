"""Metrics checked on a case computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from gclip.metrics import confusion_matrix, scores


def test_iou_by_hand():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 1], [0, 255, 2, 0]])
    c = confusion_matrix(truth, pred, num_classes=3)
    # truth 0: pred 0 x2, 1 x1, unlabelled x1; truth 1: pred 1 x2, 2 x1; truth 255 ignored
    assert c.tolist() == [[2, 1, 0, 1], [0, 2, 1, 0], [0, 0, 0, 0]]
    s = scores(c)
    assert s.iou[0] == pytest.approx(2 / 4)  # union: 4 truth-0 pixels + 0 extra predictions
    assert s.iou[1] == pytest.approx(2 / (3 + 3 - 2))
    assert s.iou[2] == 0.0  # predicted once, never true
    assert s.miou == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    assert s.pixel_accuracy == pytest.approx(4 / 7)


def test_absent_class_is_nan_and_skipped():
    s = scores(confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), 3))
    assert np.isnan(s.iou[1]) and s.miou == 1.0


def test_shape_and_label_errors():
    with pytest.raises(ValueError, match="differ in size"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix(np.full((2, 2), 7), np.zeros((2, 2)), 2)
