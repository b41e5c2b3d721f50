"""Quality metrics on cases with known answers, and the shipped classifier."""
import json
import math

import pytest
import torch

import evaluate
from models.classifier import WEIGHTS, load_classifier
from utils.datasets import to_model_range
from utils.errors import UserError
from utils.metrics import class_statistics, classify, fid_kid, memorisation, precision_recall
from utils.mnist import load_mnist


def gaussian_features(n=2000, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 128, generator=g, dtype=torch.float64) + shift


def test_identical_sets_give_zero_fid_and_same_distribution_zero_kid():
    a = gaussian_features()
    assert abs(fid_kid(a, a)[0]) < 1e-3
    # KID's unbiased estimator is ~0 for independent draws of one distribution (identical sets
    # share points across its random subsets, which biases it slightly negative)
    assert abs(fid_kid(a, gaussian_features(seed=1))[1]) < 1e-3


def test_shifted_set_gives_larger_fid():
    a, b = gaussian_features(seed=0), gaussian_features(seed=1)
    fid_same, kid_same, _ = fid_kid(a, b)
    fid_shift, kid_shift, _ = fid_kid(a, gaussian_features(seed=1, shift=0.5))
    assert fid_shift > fid_same + 20  # mean shift adds |0.5|^2 * 128 = 32
    assert kid_shift > 0.1 > abs(kid_same)


def test_precision_recall_of_a_set_with_itself_and_with_far_points():
    a = gaussian_features(500).float()
    assert precision_recall(a, a) == (1.0, 1.0)
    precision, recall = precision_recall(a, a + 100)
    assert precision == 0.0 and recall == 0.0


def test_class_statistics():
    one_class = torch.zeros(100, 10, dtype=torch.float64)
    one_class[:, 3] = 1
    stats = class_statistics(one_class, requested=torch.full((100,), 3))
    assert stats["class_kl"] == pytest.approx(math.log(10))
    assert stats["digit_accuracy"] == 1.0 and stats["confident"] == 1.0
    uniform = torch.eye(10, dtype=torch.float64).repeat(10, 1)
    assert class_statistics(uniform)["class_kl"] == pytest.approx(0.0, abs=1e-12)


def test_memorisation_flags_copies_not_noise(mnist_dir):
    train, _ = load_mnist(mnist_dir, train=True)
    copies = to_model_range(train[:50])
    noise = torch.rand(50, 1, 28, 28) * 2 - 1
    assert memorisation(copies, to_model_range(train)) == 1.0
    assert memorisation(noise, to_model_range(train)) == 0.0


@pytest.fixture(scope="module")
def classifier():
    return load_classifier("cpu")


@pytest.fixture(scope="module")
def test_set_outputs(classifier, mnist_dir):
    """(features, probabilities, labels) of the shipped classifier on the 10,000 test images, once."""
    images, labels = load_mnist(mnist_dir, train=False)
    return (*classify(classifier, to_model_range(images), "cpu"), labels)


def test_shipped_classifier_is_accurate(test_set_outputs):
    _, probs, labels = test_set_outputs
    assert (probs.argmax(1) == labels).double().mean() >= 0.993
    assert WEIGHTS.stat().st_size < 2 * 1024 * 1024


def test_classifier_with_wrong_checksum_is_refused():
    with pytest.raises(UserError, match="SHA-256"):
        load_classifier("cpu", sha256="0" * 64)


def test_one_digit_set_has_low_recall_and_large_class_kl(classifier, test_set_outputs, mnist_dir):
    train, train_labels = load_mnist(mnist_dir, train=True)
    test_features = test_set_outputs[0]

    def metrics(samples):  # what evaluate_samples reports, without its memorisation (not asserted here)
        features, probs = classify(classifier, samples, "cpu")
        recall = precision_recall(test_features.float(), features.float())[1]
        return {"fid": fid_kid(test_features, features)[0], "recall": recall, **class_statistics(probs)}

    real, single = metrics(to_model_range(train[:1000])), metrics(to_model_range(train[train_labels == 1][:1000]))
    assert single["recall"] < 0.2 < real["recall"]
    assert single["class_kl"] > 2.0 > 0.1 > real["class_kl"]
    assert single["fid"] > 10 * real["fid"]


def test_evaluate_real_floor_writes_json(mnist_dir, tmp_path):
    out = tmp_path / "real.json"
    results = evaluate.main(["--real", "--num_samples", "500", "--data_dir", mnist_dir, "--out", str(out)])
    assert json.loads(out.read_text())["fid"] == pytest.approx(results["fid"])
    assert results["precision"] > 0.5 and results["recall"] > 0.5
