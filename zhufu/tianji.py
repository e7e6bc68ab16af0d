"""Tianji's constants (https://github.com/SocialAI-tianji/Tianji, tools/finetune/data_maker/), which Zhufu's
defaults use so that Tianji's published data imports cleanly and the models are comparable: its system prompt,
evaluation inputs, recipients, scenes and styles. Its v1 input format is configs/tianji-v1.yaml, and the eight
templates its refiner rewrote 正常 festival inputs with are clean.input_rewrite's default in
schemas/config.schema.yaml. The prompts and phrase banks are Zhufu's own.
"""

from __future__ import annotations

TIANJI_SYSTEM = "你现在是一个送祝福大师，帮我针对不同人和事情、节日送对应的祝福"
TIANJI_EVALUATION_INPUTS = [
    "祝姐姐生日快乐",
    "祝姐姐生日快乐，严肃风格",
    "祝姐姐生日快乐,小红书风格",
    "祝妹妹谈判顺利，小红书风格",
    "祝大家元宵节快乐",
    "祝领导春节快乐，严肃风格",
]

RECIPIENTS_V1 = (
    "赵老师", "大舅", "大伯", "李总", "邻居赵大妈", "母亲", "姐姐", "妹妹", "哥哥", "弟弟", "爷爷", "奶奶", "外公",
    "外婆", "伯母", "叔叔", "阿姨", "堂兄", "堂妹", "表哥", "表妹", "导师", "同学", "同事", "领导", "邻居", "老板",
    "医生",
)  # fmt: skip
# "工作升职 " keeps the trailing space of Tianji's source, which leaks into its training inputs.
SCENES_V1 = (
    "生日", "春节", "元宵节", "端午节", "七夕节", "中秋节", "重阳节", "除夕", "腊八节", "谈判顺利", "乔迁新居",
    "周年纪念", "新婚快乐", "家庭和睦", "比赛取得好成绩", "发财", "工作升职 ", "康复",
)  # fmt: skip
STYLES_V2 = ("小红书", "正常", "严肃", "白话", "文艺", "文言文", "放飞自我", "祝福长文", "诗词赋")
