"""rnnkit's English G2P bundle, as package data: the folder ``g2p-cmudict`` next to this file.

Open it by name (``rnnkit.runtime.load("g2p-cmudict")``, ``rnnkit predict g2p-cmudict WORD``);
rnnkit finds it through this distribution's ``rnnkit.bundles`` entry point.
"""
