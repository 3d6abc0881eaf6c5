"""Small plotting helpers shared by the notebooks (matplotlib only)."""
import matplotlib.pyplot as plt


def attention_heatmap(ax, weights, query_labels=None, key_labels=None, title=None, cmap="viridis", vmax=None):
    """Draw one (T_q, T_k) attention matrix: rows are queries, columns the keys they attend to.

    The colour scale runs from 0 to vmax; vmax=None uses this matrix's largest weight (the most contrast for one
    map), vmax=1.0 puts several maps on one scale, so that one colorbar reads them all. Returns the image."""
    w = weights.detach().cpu().numpy() if hasattr(weights, "detach") else weights
    if not hasattr(w, "ndim"):
        raise ValueError(f"weights must be a torch tensor or a numpy array, got {type(weights).__name__}")
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"weights must be one non-empty (T_q, T_k) matrix, got shape {tuple(w.shape)}; "
                         "pick one head, e.g. weights[0, 0] of a (batch, heads, T_q, T_k) tensor")
    for name, labels, n in (("query_labels", query_labels, w.shape[0]), ("key_labels", key_labels, w.shape[1])):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} must have one label per {'row' if name[0] == 'q' else 'column'} "
                             f"({n}), got {len(labels)}")
    if vmax is not None and (isinstance(vmax, bool) or not isinstance(vmax, (int, float)) or not vmax > 0):
        raise ValueError(f"vmax must be None (this matrix's max) or a positive number such as 1.0, got {vmax!r}")
    top = max(float(w.max()), 1e-9) if vmax is None else float(vmax)
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=top, aspect="auto")
    if query_labels is not None:
        ax.set_yticks(range(len(query_labels)), query_labels, fontsize=7)
    if key_labels is not None:
        ax.set_xticks(range(len(key_labels)), key_labels, fontsize=7, rotation=90)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    if title:
        ax.set_title(title, fontsize=9)
    return im

