import torch

from actors.modeling.coreset import greedy_coreset


def _reference(features: torch.Tensor, n: int, start: int) -> list[int]:
    selected = [start]
    dist = ((features - features[start]) ** 2).sum(1)
    for _ in range(n - 1):
        j = int(dist.argmax())
        selected.append(j)
        dist = torch.minimum(dist, ((features - features[j]) ** 2).sum(1))
    return selected


def test_matches_the_textbook_greedy_k_center():
    f = torch.randn(600, 24, generator=torch.Generator().manual_seed(3))
    idx = greedy_coreset(f, 40, projection_dim=0, seed=1)
    assert idx.tolist() == _reference(f, 40, int(idx[0]))


def test_deterministic_unique_and_bounded():
    f = torch.randn(2000, 64)
    a = greedy_coreset(f, 100, projection_dim=16, seed=5)
    b = greedy_coreset(f, 100, projection_dim=16, seed=5)
    assert torch.equal(a, b) and a.unique().numel() == 100
    assert torch.equal(greedy_coreset(f, 5000), torch.arange(2000))


def test_linear_memory_on_a_large_set():
    # 300k x 300k distances would be 360 GB: completing proves nothing quadratic is built.
    f = torch.randn(300_000, 32)
    idx = greedy_coreset(f, 20, projection_dim=8)
    assert idx.unique().numel() == 20


def test_covers_outliers_first():
    f = torch.zeros(1000, 2)
    f[:, 0] = torch.linspace(0, 1, 1000)
    f[-1] = torch.tensor([100.0, 100.0])  # a far outlier must be picked by k-center
    idx = greedy_coreset(f, 3, projection_dim=0)
    assert 999 in idx.tolist()
