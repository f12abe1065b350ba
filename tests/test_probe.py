"""fidelity.Probe: scores a UNet in memory against the teacher, agreeing with the file-based fidelity check."""

import math

import torch

from sdkd_ext.cache import Cache
from sdkd_ext.checkpoint import open_model
from sdkd_ext.detect import describe
from sdkd_ext.distill import CPU, student_model, teacher_model
from sdkd_ext.fidelity import check_specs, probe
from sdkd_ext.metrics import psnr
from sdkd_ext.shapes import accuracy
from sdkd_ext.variants import get_variant

from distill_helpers import one_thread  # noqa: F401 (fixture)


def test_probe_scores_the_teacher_as_itself_and_a_pruned_student_far_below(tmp_path):
    src = open_model("demo")
    info = describe(src)
    teacher = teacher_model(src, info, CPU)
    p = probe(src, teacher, Cache(tmp_path), n=2)
    assert [s for s in p.specs] == check_specs(2)
    same = p.score(teacher)
    assert same["psnr"] == math.inf and same["latent_mse"] == 0 and same["accuracy"] == p.teacher_accuracy["mean"]
    student, _ = student_model(src, info, get_variant("tiny"))
    student.train()
    z, images = p.render(student)
    assert student.training, "the student's mode is restored"
    far = p.score(student)
    assert far["psnr"] == sum(psnr(a, b) for a, b in zip(images, p.teacher_images)) / 2 < 10
    assert far["latent_mse"] == torch.mean((z.double() - p.teacher_latents.double()) ** 2).item() > 1
    assert far["accuracy"] == accuracy(images, p.specs)["mean"]
