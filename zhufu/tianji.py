"""Tianji's constants, which Zhufu's defaults use so that Tianji's published data imports cleanly and
the models are comparable (see ../shared/ref/tianji-grid.md): its system prompt and its evaluation inputs.
"""

TIANJI_SYSTEM = "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福"
TIANJI_EVALUATION_INPUTS = [
    "祝姐姐生日快乐",
    "祝姐姐生日快乐，严肃风格",
    "祝姐姐生日快乐,小红书风格",
    "祝妹妹谈判顺利，小红书风格",
    "祝大家元宵节快乐",
    "祝领导春节快乐，严肃风格",
]
