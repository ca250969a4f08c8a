"""The V-net method (Chen, Qin & Li): data, observation simulation, normalisations, real-sky checks.

Modules here are imported explicitly (``from dustjax.vnet import observe``); importing the package
imports nothing else.
"""
