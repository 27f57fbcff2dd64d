"""Report helpers: a method keeps one colour in every panel and in the legend."""

import matplotlib.pyplot as plt

from nrt.evaluation.report import curves_figure


def test_a_method_has_one_colour_in_every_panel_and_the_legend():
    # sft logs no reward (its panel has only nrt), both log validation accuracy, as in the demo
    sft = [[{"step": s, "loss": 1.0 / s} for s in (1, 2)] + [{"step": 2, "eval_accuracy": 0.1}]]
    nrt = [[{"step": s, "reward_mean": 0.1 * s} for s in (1, 2)] + [{"step": 2, "eval_accuracy": 0.5}]]
    fig = curves_figure({"sft": sft, "nrt": nrt}, {"reward_mean": "reward", "eval_accuracy": "validation"})
    colours: dict[str, set] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"sft", "nrt"} and all(len(c) == 1 for c in colours.values())
    assert colours["sft"] != colours["nrt"]
    legend = fig.legends[0]
    for handle, text in zip(legend.legend_handles, legend.get_texts()):
        assert {handle.get_color()} == colours[text.get_text()]
    plt.close(fig)
