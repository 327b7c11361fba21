"""The language setting: masked-LM pretraining on PCFG sentences (Liu et al., 2023).

The grammar and its exact computations are plain numpy modules (`grammar`, `inside_outside`,
`loss_gap`, `span_tasks`) with their TFDS builder (`tfds_builder`); the setting's plug-ins for the
generic code are `setting` (the `SETTING` of `config.setting = "language"`), `data`, `objectives`,
`adversary`, `features`, `evaluation` and `probes`.
"""
