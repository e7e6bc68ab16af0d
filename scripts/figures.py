# ruff: noqa: F821  (`snakemake` is injected by Snakemake's script: directive)
from zhufu.data.figures import draw_figures
from zhufu.scripting import rule_step

with rule_step(snakemake, "figures"):
    draw_figures(
        report=snakemake.input.report,
        suitability=snakemake.input.suitability or None,
        recipients=snakemake.params.view["recipients"],
        scenes=snakemake.params.view["scenes"],
        styles=snakemake.params.view["styles"],
        out_suitability=snakemake.output.suitability,
        out_lengths=snakemake.output.lengths,
        out_cells=snakemake.output.cells,
    )
