# %% [markdown]
# # stablesam
#
# > Sharpness-aware minimization, stabilised by renormalization: a drop-in PyTorch optimizer, the paper's theory checked numerically, and its experiments as notebooks.

# %% [markdown]
# (The full front page comes with the docs issue.)
#
# ## Install
#
# ```sh
# pip install -e ".[dev]"
# ```
#
# ## Test
#
# ```sh
# nbdev_test && pytest
# ```
