"""Figure files are byte-identical when the figure is unchanged; colours are per depth."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from milr.plotting import depth_color, savefig, use_style  # noqa: E402


def _figure(y3=9):
    use_style()
    fig, ax = plt.subplots()
    ax.loglog([1, 2, 3], [1, 4, y3], "o-", label="depth 2")
    ax.legend()
    return fig


def test_savefig_is_deterministic(tmp_path):
    a = savefig(_figure(), "f", tmp_path / "a")
    b = savefig(_figure(), "f", tmp_path / "b")
    c = savefig(_figure(y3=10), "f", tmp_path / "c")
    for pa, pb, pc in zip(a, b, c):
        assert pa.read_bytes() == pb.read_bytes()
        assert pa.read_bytes() != pc.read_bytes()
    assert [p.suffix for p in a] == [".png", ".pdf"]


def test_depth_colours_distinct_and_stable():
    cols = [depth_color(d) for d in (1, 2, 4, 8, 16, 32)]
    assert len(set(cols)) == 6
    assert depth_color(8) == depth_color(8)


def test_panel_grid_lays_out_any_number_of_data_sets():
    import pytest

    from milr.plotting import panel_grid

    for n, rows, cols in [(1, 1, 1), (2, 1, 2), (3, 1, 3), (4, 2, 3), (7, 3, 3)]:
        fig, axes = panel_grid(n, panel=(2.0, 1.5))
        assert len(axes) == n and all(a.get_visible() for a in axes)
        assert sum(not a.get_visible() for a in fig.axes) == rows * cols - n
        assert tuple(fig.get_size_inches()) == pytest.approx((2.0 * cols, 1.5 * rows))
        plt.close(fig)
    with pytest.raises(ValueError, match="n=0"):
        panel_grid(0)
