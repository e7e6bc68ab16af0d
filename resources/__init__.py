"""Package data, installed as `zhufu.resources`: the phrase bank, the suitability matrix and the font."""
