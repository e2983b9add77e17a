"""CTC beam search with a word n-gram, compiled with numba: pyctcdecode's algorithm without Python objects.

The search is pyctcdecode's (0.5.0), so tuned weights carry over: per frame, every beam is extended
by every label whose log-probability reaches `token_min_logp` (and the frame's best label); a blank
or a repeated label keeps the text, the word delimiter ends a word, any other label extends the
partial word. Beams with the same text, partial word and last label are merged (log-sum-exp of their
acoustic scores; the word frames of the later one). A beam's score is its acoustic score plus its LM score:

    per completed word   alpha * ln(10) * (log10 p(word | history) + [unk_offset if not a known word]) + beta
    the partial word     unk_offset (* length / 6 past 6 labels) when it begins no known word, else 0
    at the end           the last partial word as a word, then alpha * ln(10) * log10 p(</s> | history)

Beams below the best by more than `prune_logp` are dropped, then all but the best `beam_width`.
One difference: pyctcdecode scores an empty word (with <unk>'s probability, the unknown-word
offset and beta) at the end of a text that ends with a delimiter, which drops good texts whenever
the last frames emit one (CTC models often do); here such a text just ends. `empty_last_word=True`
restores pyctcdecode's rule (the tests and benchmark use it to check that both search the same way).

Texts are nodes of a prefix tree over labels, built while decoding: a node holds what depends only
on the text (its LM score and state, its position in the tree of known words), so a word is scored
once however many beams reach it, and merging is a lookup by node. Everything lives in arrays that
grow by doubling; one call decodes one utterance and releases the GIL, so threads decode a batch.
"""

from __future__ import annotations

import numba
import numpy as np

from w2v.lm.ngram import LOG10_TO_LN, UNK_MISSING_LOG10, score_word

AVG_WORD_LABELS = 6  # pyctcdecode's AVG_TOKEN_LEN: longer unknown partial words cost proportionally more


@numba.njit(cache=True)
def build_word_trie(chars, offsets, label_cps, label_ids, usable, known):
    """A tree of the LM's words spelled in label ids (words with a character no label spells are left out).

    Returns per node: first child, next sibling, label, the word it ends (-1: none) and whether a
    known word (see `known`) passes through it.
    """
    cap = len(chars) + 1
    first = np.full(cap, -1, np.int32)
    sibling = np.full(cap, -1, np.int32)
    label = np.full(cap, -1, np.int32)
    word = np.full(cap, -1, np.int32)
    through_known = np.zeros(cap, np.bool_)
    count = 1
    spelled = np.empty(cap, np.int32)
    for w in range(len(offsets) - 1):
        if not usable[w] or offsets[w] == offsets[w + 1]:
            continue
        length = 0
        for i in range(offsets[w], offsets[w + 1]):
            j = np.searchsorted(label_cps, chars[i])
            if j >= len(label_cps) or label_cps[j] != chars[i]:
                length = -1
                break
            spelled[length] = label_ids[j]
            length += 1
        if length <= 0:
            continue
        node = 0
        if known[w]:
            through_known[0] = True
        for i in range(length):
            c = first[node]
            while c >= 0 and label[c] != spelled[i]:
                c = sibling[c]
            if c < 0:
                c = count
                count += 1
                label[c] = spelled[i]
                sibling[c] = first[node]
                first[node] = c
            node = c
            if known[w]:
                through_known[node] = True
        word[node] = w
    return first[:count], sibling[:count], label[:count], word[:count], through_known[:count]


@numba.njit(cache=True, nogil=True)
def _trie_step(node, lab, first, sibling, label):
    if node < 0:
        return -1
    c = first[node]
    while c >= 0 and label[c] != lab:
        c = sibling[c]
    return c


@numba.njit(cache=True, nogil=True)
def _history_key(node, last, words, space, parent, node_label):
    """A hash of a text's partial word, its last `words` completed words and the last label."""
    h = np.int64(1469598103934665603)  # FNV-1a over the labels, then the last label
    spaces = 0
    while node > 0:
        lab = node_label[node]
        if lab == space:
            spaces += 1
            if spaces > words:
                break
        h = (h ^ np.int64(lab + 1)) * np.int64(1099511628211)
        node = parent[node]
    return (h ^ np.int64(last + 2)) * np.int64(1099511628211)


@numba.njit(cache=True, nogil=True)
def _grow1(a, cap):
    out = np.empty(cap, a.dtype)
    out[: len(a)] = a
    return out


@numba.njit(cache=True, nogil=True)
def _grow2(a, cap):
    out = np.empty((cap, a.shape[1]), a.dtype)
    out[: a.shape[0]] = a
    return out


@numba.njit(cache=True, nogil=True)
def _logaddexp(a, b):
    if a >= b:
        return a + np.log1p(np.exp(b - a))
    return b + np.log1p(np.exp(a - b))


@numba.njit(cache=True, nogil=True)
def beam_search(logp, blank, space, beam_width, prune_logp, token_min_logp, alpha, beta, unk_offset, has_lm,
                empty_last_word, prune_history,
                t_first, t_sibling, t_label, t_word, t_known, known,
                prob, backoff, word, child, order, unk, eos, start_words, start_backoffs, start_length):
    """Decode one utterance: log-probs [T, V] → (labels of the best text, word start and end frames, score)."""
    frames, width = logp.shape
    span = start_words.shape[0]
    weight = alpha * LOG10_TO_LN
    # the prefix tree of texts
    cap = 256
    parent = np.empty(cap, np.int32)
    node_label = np.empty(cap, np.int32)
    first = np.empty(cap, np.int32)
    sibling = np.empty(cap, np.int32)
    base = np.empty(cap, np.int32)  # the node after the last completed word: it holds the LM state
    lm = np.empty(cap, np.float64)  # LM score of the completed words (alpha, beta applied)
    partial = np.empty(cap, np.float64)  # the partial word's score
    trie = np.empty(cap, np.int32)  # the partial word's node among the LM's words (-1: none)
    plen = np.empty(cap, np.int32)
    st_len = np.empty(cap, np.int32)
    st_words = np.empty((cap, span), np.int32)
    st_bo = np.empty((cap, span), np.float32)
    stamp = np.empty(cap, np.int32)  # the frame whose candidates `head` lists
    head = np.empty(cap, np.int32)
    parent[0], node_label[0], first[0], sibling[0], base[0] = -1, -1, -1, -1, 0
    lm[0], partial[0], trie[0], plen[0], stamp[0] = 0.0, 0.0, 0, 0, -1
    st_len[0] = start_length
    st_words[0] = start_words
    st_bo[0] = start_backoffs
    nodes = 1
    # completed words' frames: a linked list per beam
    wcap = 256
    w_parent = np.empty(wcap, np.int32)
    w_start = np.empty(wcap, np.int32)
    w_end = np.empty(wcap, np.int32)
    words = 0
    # beams and this frame's candidates
    b_node = np.zeros(beam_width, np.int32)
    b_last = np.full(beam_width, -1, np.int32)
    b_score = np.zeros(beam_width, np.float64)
    b_ps = np.full(beam_width, -1, np.int32)
    b_pe = np.full(beam_width, -1, np.int32)
    b_wl = np.full(beam_width, -1, np.int32)
    beams = 1
    ccap = beam_width * width + beam_width
    c_node = np.empty(ccap, np.int32)
    c_last = np.empty(ccap, np.int32)
    c_score = np.empty(ccap, np.float64)
    c_total = np.empty(ccap, np.float64)
    c_ps = np.empty(ccap, np.int32)
    c_pe = np.empty(ccap, np.int32)
    c_wl = np.empty(ccap, np.int32)
    c_next = np.empty(ccap, np.int32)
    c_empty = np.zeros(ccap, np.bool_)  # at the end: the beam had no partial word (see empty_last_word)
    labels = np.empty(width, np.int32)
    scratch_w = np.empty(span, np.int32)
    scratch_bo = np.empty(span, np.float32)
    final = np.empty(beam_width, np.float64)
    seen = np.empty(beam_width, np.int64)
    history_words = max(1, order - 1) if has_lm else 1
    for t in range(frames + 1):
        last_frame = t == frames
        # the labels tried this frame (none at the end: each beam's partial word is completed instead)
        count = 0
        if not last_frame:
            best_label = 0
            for c in range(width):
                if logp[t, c] > logp[t, best_label]:
                    best_label = c
            for c in range(width):
                if logp[t, c] >= token_min_logp or c == best_label:
                    labels[count] = c
                    count += 1
        else:
            labels[0] = space
            count = 1
        need = nodes + beams * count + 1
        if need > cap:
            while cap < need:
                cap *= 2
            parent, node_label, first, sibling = _grow1(parent, cap), _grow1(node_label, cap), _grow1(first, cap), _grow1(sibling, cap)
            base, lm, partial, trie = _grow1(base, cap), _grow1(lm, cap), _grow1(partial, cap), _grow1(trie, cap)
            plen, st_len, stamp, head = _grow1(plen, cap), _grow1(st_len, cap), _grow1(stamp, cap), _grow1(head, cap)
            st_words, st_bo = _grow2(st_words, cap), _grow2(st_bo, cap)
        if words + beams * count + 1 > wcap:
            while wcap < words + beams * count + 1:
                wcap *= 2
            w_parent, w_start, w_end = _grow1(w_parent, wcap), _grow1(w_start, wcap), _grow1(w_end, wcap)
        candidates = 0
        for li in range(count):
            c = labels[li]
            p = logp[t, c] if not last_frame else 0.0
            for b in range(beams):
                n = b_node[b]
                ps, pe, wl = b_ps[b], b_pe[b], b_wl[b]
                last = b_last[b]
                if not last_frame and (c == blank or c == last):
                    m = n
                    if c != blank:
                        pe = t + 1
                elif c == space and plen[n] == 0:
                    m = n
                    ps, pe = -1, -1
                else:
                    # the child of n by c, made (and scored) the first time a beam reaches it
                    m = first[n]
                    while m >= 0 and node_label[m] != c:
                        m = sibling[m]
                    if m < 0:
                        m = nodes
                        nodes += 1
                        parent[m], node_label[m], first[m], sibling[m] = n, c, -1, first[n]
                        first[n] = m
                        stamp[m] = -1
                        if c == space:  # the partial word is complete: score it after its history
                            h = base[n]
                            w = t_word[trie[n]] if trie[n] >= 0 else -1
                            oov = w < 0 or not known[w]
                            if w < 0:
                                w = unk
                            base[m], trie[m], plen[m], partial[m] = m, 0, 0, 0.0
                            st_len[m] = 0
                            lm[m] = lm[h]
                            if has_lm:
                                logp10 = UNK_MISSING_LOG10  # an ARPA without <unk>: KenLM's figure
                                if w >= 0:
                                    logp10, st_len[m] = score_word(w, st_words[h], st_bo[h], st_len[h], prob,
                                                                   backoff, word, child, order, st_words[m], st_bo[m])
                                if oov:
                                    logp10 += unk_offset
                                lm[m] = lm[h] + weight * logp10 + beta
                        else:
                            base[m], lm[m], plen[m] = base[n], lm[n], plen[n] + 1
                            trie[m] = _trie_step(trie[n], c, t_first, t_sibling, t_label)
                            partial[m] = 0.0
                            if has_lm and (trie[m] < 0 or not t_known[trie[m]]):
                                partial[m] = unk_offset
                                if plen[m] > AVG_WORD_LABELS:
                                    partial[m] = unk_offset * plen[m] / AVG_WORD_LABELS
                    if c == space:
                        w_parent[words], w_start[words], w_end[words] = wl, ps, pe
                        wl = words
                        words += 1
                        ps, pe = -1, -1
                    else:
                        if ps < 0:
                            ps = t
                        pe = t + 1
                # merge with a candidate of the same text and last label
                if stamp[m] != t:
                    stamp[m] = t
                    head[m] = -1
                k = head[m]
                key = c if not last_frame else -1
                while k >= 0 and c_last[k] != key:
                    k = c_next[k]
                if k >= 0:  # pyctcdecode keeps the later beam's word frames (and, at the end, its split)
                    c_score[k] = _logaddexp(c_score[k], b_score[b] + p)
                    c_ps[k], c_pe[k], c_wl[k] = ps, pe, wl
                    c_empty[k] = last_frame and m == n
                else:
                    k = candidates
                    candidates += 1
                    c_node[k], c_last[k], c_score[k] = m, key, b_score[b] + p
                    c_empty[k] = last_frame and m == n
                    c_ps[k], c_pe[k], c_wl[k] = ps, pe, wl
                    c_next[k] = head[m]
                    head[m] = k
        best = -np.inf
        for k in range(candidates):
            m = c_node[k]
            c_total[k] = c_score[k] + lm[m] + partial[m]
            if last_frame and has_lm:
                h = base[m]
                e = eos if eos >= 0 else unk
                if empty_last_word and c_empty[k]:  # pyctcdecode's rule: an empty word, scored as unknown
                    logp10 = UNK_MISSING_LOG10
                    length = 0
                    if unk >= 0:
                        logp10, length = score_word(unk, st_words[h], st_bo[h], st_len[h], prob, backoff, word,
                                                    child, order, scratch_w, scratch_bo)
                    c_total[k] += weight * (logp10 + unk_offset) + beta
                    if e >= 0:
                        logp10, _ = score_word(e, scratch_w.copy(), scratch_bo.copy(), length, prob, backoff, word,
                                               child, order, scratch_w, scratch_bo)
                        c_total[k] += weight * logp10
                elif e >= 0:
                    logp10, _ = score_word(e, st_words[h], st_bo[h], st_len[h], prob, backoff, word, child, order,
                                           scratch_w, scratch_bo)
                    c_total[k] += weight * logp10
            if c_total[k] > best:
                best = c_total[k]
        kept = np.empty(candidates, np.int64)
        n_kept = 0
        for k in range(candidates):
            if c_total[k] >= best + prune_logp:
                kept[n_kept] = k
                n_kept += 1
        kept = kept[:n_kept]
        order_k = np.argsort(-c_total[kept], kind="mergesort")
        beams = 0
        seen_count = 0
        for i in range(min(beam_width, n_kept)):
            k = kept[order_k[i]]
            if prune_history and not last_frame:
                # pyctcdecode's decode(): one beam per (last order-1 words, partial word, last label)
                key = _history_key(c_node[k], c_last[k], history_words, space, parent, node_label)
                dup = False
                for j in range(seen_count):
                    if seen[j] == key:
                        dup = True
                        break
                if dup:
                    continue
                seen[seen_count] = key
                seen_count += 1
            b_node[beams], b_last[beams], b_score[beams] = c_node[k], c_last[k], c_score[k]
            b_ps[beams], b_pe[beams], b_wl[beams] = c_ps[k], c_pe[k], c_wl[k]
            final[beams] = c_total[k]
            beams += 1
    # the best text: labels from the root, and its words' frames
    n = b_node[0]
    length = 0
    m = n
    while m > 0:
        length += 1
        m = parent[m]
    out = np.empty(length, np.int32)
    m = n
    for i in range(length - 1, -1, -1):
        out[i] = node_label[m]
        m = parent[m]
    n_words = 0
    wl = b_wl[0]
    while wl >= 0:
        n_words += 1
        wl = w_parent[wl]
    starts = np.empty(n_words, np.int32)
    ends = np.empty(n_words, np.int32)
    wl = b_wl[0]
    for i in range(n_words - 1, -1, -1):
        starts[i], ends[i] = w_start[wl], w_end[wl]
        wl = w_parent[wl]
    return out, starts, ends, final[0]
