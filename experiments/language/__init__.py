"""The language setting: masked-LM pretraining on PCFG sentences (Liu et al., 2023).

The grammars and their exact computations are plain numpy modules (`grammar`, `rooted_grammar`,
`sampling`, `inside_outside`, `loss_gap`, `span_tasks`, `paper_tasks`) with their TFDS builder
(`tfds_builder`); the setting's plug-ins for the generic code are `setting` (the `SETTING` of
`config.setting = "language"`), `data`, `objectives`, `adversary`, `features`, `evaluation`,
`probes` and `finetune`; `embedding` embeds a narrow model into a wider one, same function.
"""
