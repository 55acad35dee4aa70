"""The distillation methods: the DM-family loop and model pools (DM, IDM, IID, DSDM), coresets, EAD and
its trajectories, the GAN family (DiM-style generators).

Imports core, fast, the contract modules and runs; never reporting, batch or cli.
"""
