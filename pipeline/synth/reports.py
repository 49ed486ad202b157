"""CT-RATE style radiology reports written from a scan's drawn findings.

Findings run through the chest in the order CT-RATE reports use (airways,
mediastinum and heart, vessels, lymph nodes, oesophagus, lungs, pleura, upper
abdomen, bones), each positive finding in one of several phrasings with its
side, lobe and size, and a negative statement for many absent findings, as
radiologists write them. Impressions list the positive findings, most important
first, or a normal statement. All choices come from the scan's generator, so the
text is deterministic.
"""

from __future__ import annotations

import numpy as np

from pipeline.synth.findings import Findings

LOBE_NAME = {"upper": "upper lobe", "middle": "middle lobe", "lower": "lower lobe"}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _where(side: str) -> str:
    return {"bilateral": "bilateral", "right": "right", "left": "left"}[side]


def _lungs(side: str) -> str:
    return "both lungs" if side == "bilateral" else f"the {side} lung"


def _lobes(side: str, lobes: list[str]) -> str:
    sides = ["right", "left"] if side == "bilateral" else [side]
    return " and ".join(f"{s} {LOBE_NAME[lobe]}" for s, lobe in zip(sides, lobes))


def _mm(v: float) -> str:
    return f"{v:.0f} mm"


def _sentences(f: Findings, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(findings sentences, impression phrases)."""
    d = f.details
    sentences: list[str] = []
    impressions: list[str] = []
    sentences.append(
        _pick(
            rng,
            [
                "Trachea and both main bronchi are open.",
                "Trachea and main bronchi are patent.",
                "The trachea and both main bronchi are in normal calibre and patent.",
            ],
        )
    )
    # heart, pericardium, vessels
    if f.has("Cardiomegaly"):
        sentences.append(
            _pick(
                rng, ["The heart is enlarged.", "Cardiomegaly is present.", "Heart size is increased (cardiomegaly)."]
            )
        )
        impressions.append("Cardiomegaly.")
    else:
        sentences.append(
            _pick(
                rng,
                [
                    "Heart contour and size are normal.",
                    "Heart size is within normal limits.",
                    "Mediastinal main vascular structures, heart contour and size are normal.",
                ],
            )
        )
    if f.has("Pericardial effusion"):
        t = d["Pericardial effusion"]["thickness_mm"]
        sentences.append(
            _pick(
                rng,
                [
                    f"Pericardial effusion reaching {_mm(t)} in thickness is observed.",
                    f"There is pericardial fluid with a thickness of {_mm(t)}.",
                    "Pericardial effusion is present.",
                ],
            )
        )
        impressions.append("Pericardial effusion.")
    elif rng.random() < 0.7:
        sentences.append(
            _pick(
                rng,
                [
                    "No pericardial effusion or thickening was detected.",
                    "Pericardial effusion-thickening was not observed.",
                ],
            )
        )
    if f.has("Arterial wall calcification"):
        sev = d["Arterial wall calcification"]["severity"]
        sentences.append(
            _pick(
                rng,
                [
                    f"There are {sev} atherosclerotic calcifications in the aortic wall.",
                    f"Calcific atheroma plaques are seen in the wall of the thoracic aorta ({sev}).",
                    "Atherosclerotic changes with wall calcification are present in the aorta.",
                ],
            )
        )
        impressions.append("Atherosclerotic calcification of the thoracic aorta.")
    if f.has("Coronary artery wall calcification"):
        c = d["Coronary artery wall calcification"]
        names = {"LAD": "left anterior descending", "LCx": "circumflex", "RCA": "right coronary"}
        vessels = ", ".join(names[v] for v in c["vessels"])
        sentences.append(
            _pick(
                rng,
                [
                    f"Calcific plaques are observed in the coronary arteries ({vessels}).",
                    f"Coronary artery calcification is noted along the {vessels} artery course.",
                    f"There is {c['severity']} calcification of the coronary arteries.",
                ],
            )
        )
        impressions.append("Coronary artery calcification.")
    # lymph nodes
    if f.has("Lymphadenopathy"):
        ln = d["Lymphadenopathy"]
        where = ", ".join(ln["stations"])
        sentences.append(
            _pick(
                rng,
                [
                    f"Lymph nodes with a short axis up to {_mm(max(ln['short_axis_mm']))} are observed in the {where} region.",
                    f"Enlarged lymph nodes are present ({where}), the largest {_mm(max(ln['short_axis_mm']))} in short axis.",
                    f"Mediastinal lymphadenopathy is seen in the {where} station.",
                ],
            )
        )
        impressions.append("Mediastinal lymphadenopathy.")
    else:
        sentences.append(
            _pick(
                rng,
                [
                    "No lymph node was detected in mediastinal or hilar pathological size and appearance.",
                    "There are no enlarged lymph nodes in the mediastinum or hila.",
                    "No mediastinal or hilar lymphadenopathy was detected.",
                ],
            )
        )
    # oesophagus / hernia
    if f.has("Hiatal hernia"):
        sentences.append(
            _pick(
                rng,
                [
                    "A hiatal hernia is observed at the lower end of the oesophagus.",
                    "Sliding type hiatal hernia is present.",
                    "There is a hiatal hernia containing air and fluid behind the heart.",
                ],
            )
        )
        impressions.append("Hiatal hernia.")
    elif rng.random() < 0.6:
        sentences.append("Oesophagus calibre is normal as far as can be seen; no hiatal hernia.")
    if f.has("Medical material"):
        kinds = d["Medical material"]["kinds"]
        text = {
            "port": "a port catheter in the anterior chest wall",
            "pacemaker": "a cardiac pacemaker with leads",
            "sternotomy wires": "sternotomy wires",
            "surgical clips": "surgical clips in the mediastinum",
            "ECG electrodes": "ECG electrodes on the chest wall",
            "central venous catheter": "a central venous catheter with its tip in the superior vena cava",
        }
        sentences.append(
            _pick(rng, ["There is ", "Note is made of ", "Medical material: "])
            + " and ".join(text[k] for k in kinds)
            + "."
        )
        impressions.append(" and ".join(text[k] for k in kinds).capitalize() + ".")
    # lungs
    if f.has("Emphysema"):
        e = d["Emphysema"]
        sentences.append(
            _pick(
                rng,
                [
                    f"{e['kind'].capitalize()} emphysematous changes are seen in both lungs.",
                    f"There is {e['severity']} {e['kind']} emphysema.",
                    f"Emphysema ({e['kind']}) is present, more pronounced in the "
                    f"{'lower' if e['kind'] == 'panlobular' else 'upper'} zones.",
                ],
            )
        )
        impressions.append(f"{e['kind'].capitalize()} emphysema.")
    if f.has("Mosaic attenuation pattern"):
        sentences.append(
            _pick(
                rng,
                [
                    "A mosaic attenuation pattern is observed in both lungs.",
                    "There are areas of mosaic attenuation, which may reflect small airway disease.",
                    "Heterogeneous (mosaic) attenuation of the lung parenchyma is noted.",
                ],
            )
        )
        impressions.append("Mosaic attenuation pattern.")
    if f.has("Bronchiectasis"):
        b = d["Bronchiectasis"]
        sentences.append(
            _pick(
                rng,
                [
                    f"{b['kind'].capitalize()} bronchiectasis is seen in the lower zones of {_lungs(b['side'])}.",
                    f"There are {b['kind']} bronchiectatic changes in {_lungs(b['side'])}.",
                    f"Bronchial dilatation (bronchiectasis) is present, {_where(b['side'])}.",
                ],
            )
        )
        impressions.append("Bronchiectasis.")
    if f.has("Peribronchial thickening"):
        pb = d["Peribronchial thickening"]
        sentences.append(
            _pick(
                rng,
                [
                    f"Peribronchial thickening is observed in {_lungs(pb['side'])}.",
                    "Bronchial wall thickening is noted.",
                    f"There is {_where(pb['side'])} peribronchial thickening.",
                ],
            )
        )
        impressions.append("Peribronchial thickening.")
    if f.has("Lung nodule"):
        nods = d["Lung nodule"]["nodules"]
        n0 = nods[0]
        loc = f"{n0['side']} {LOBE_NAME[n0['lobe']]}"
        size = _mm(n0["diameter_mm"])
        if len(nods) == 1:
            sentences.append(
                _pick(
                    rng,
                    [
                        f"A {size} nodule is observed in the {loc}.",
                        f"There is a solid nodule measuring {size} in the {loc}.",
                        f"In the {loc}, a nodule of {size} in diameter is seen.",
                    ],
                )
            )
            impressions.append(f"Pulmonary nodule in the {loc}.")
        else:
            count = {2: "Two", 3: "Three", 4: "Four"}[len(nods)]
            sentences.append(
                _pick(
                    rng,
                    [
                        f"{count} nodules are observed in the lungs, the largest {size} in the {loc}.",
                        f"Multiple pulmonary nodules, the largest measuring {size} in the {loc}.",
                    ],
                )
            )
            impressions.append("Multiple pulmonary nodules.")
        if any(n["calcified"] for n in nods):
            sentences.append("A calcified nodule consistent with a granuloma is also present.")
    if f.has("Lung opacity"):
        o = d["Lung opacity"]
        sentences.append(
            _pick(
                rng,
                [
                    f"Ground-glass opacities are observed in the {_lobes(o['side'], o['lobes'])}.",
                    f"There are patchy ground glass densities in {_lungs(o['side'])}.",
                    f"Areas of increased density (ground-glass opacity) are seen in the {_lobes(o['side'], o['lobes'])}.",
                ],
            )
        )
        impressions.append("Ground-glass opacities.")
    if f.has("Consolidation"):
        c = d["Consolidation"]
        loc = f"{c['side']} {LOBE_NAME[c['lobe']]}"
        sentences.append(
            _pick(
                rng,
                [
                    f"Consolidation with air bronchograms is observed in the {loc}.",
                    f"There is a consolidated area containing air bronchograms in the {loc}.",
                    f"In the {loc}, a consolidation is seen.",
                ],
            )
        )
        impressions.append(f"Consolidation in the {loc}; pneumonia?")
    if f.has("Atelectasis"):
        a = d["Atelectasis"]
        loc = f"{a['side']} {LOBE_NAME[a['lobe']]}"
        if a["kind"] == "subsegmental":
            sentences.append(
                _pick(
                    rng,
                    [
                        f"Subsegmental (plate-like) atelectasis is seen in the {loc}.",
                        f"There are linear atelectatic changes in the {loc}.",
                    ],
                )
            )
            impressions.append("Subsegmental atelectasis.")
        else:
            sentences.append(
                _pick(
                    rng,
                    [
                        f"Atelectasis of the {loc} with volume loss is observed.",
                        f"The {loc} is collapsed (lobar atelectasis).",
                    ],
                )
            )
            impressions.append(f"Atelectasis of the {loc}.")
    if f.has("Pulmonary fibrotic sequela"):
        fs = d["Pulmonary fibrotic sequela"]
        sentences.append(
            _pick(
                rng,
                [
                    f"Fibrotic bands are observed in the {_lobes(fs['side'], fs['lobes'])}.",
                    f"Sequelae fibrotic changes are seen in {_lungs(fs['side'])}.",
                    f"There are linear fibrotic densities in the {_lobes(fs['side'], fs['lobes'])}.",
                ],
            )
        )
        impressions.append("Fibrotic sequelae.")
    if f.has("Interlobular septal thickening"):
        st = d["Interlobular septal thickening"]
        sentences.append(
            _pick(
                rng,
                [
                    f"Interlobular septal thickening is observed in the {st['zone']} parts of {_lungs(st['side'])}.",
                    "There is smooth thickening of the interlobular septa.",
                    f"Septal thickening is present, {_where(st['side'])}, {st['zone']}.",
                ],
            )
        )
        impressions.append("Interlobular septal thickening.")
    lung_positive = any(
        f.has(n)
        for n in (
            "Emphysema",
            "Lung nodule",
            "Lung opacity",
            "Consolidation",
            "Atelectasis",
            "Pulmonary fibrotic sequela",
            "Mosaic attenuation pattern",
            "Interlobular septal thickening",
            "Bronchiectasis",
        )
    )
    if not lung_positive:
        sentences.append(
            _pick(
                rng,
                [
                    "No mass or infiltrative lesion was detected in both lungs.",
                    "Lung parenchyma is normal; no nodule, consolidation or ground glass opacity.",
                    "Both lungs are clear.",
                ],
            )
        )
    # pleura
    if f.has("Pleural effusion"):
        pe = d["Pleural effusion"]
        space = "both hemithoraces" if pe["side"] == "bilateral" else f"the {pe['side']} hemithorax"
        sentences.append(
            _pick(
                rng,
                [
                    f"There is a {pe['size']} {_where(pe['side'])} pleural effusion.",
                    f"{pe['size'].capitalize()} pleural effusion is observed in {space}.",
                    f"Pleural fluid ({pe['size']}) is seen layering posteriorly in {space}.",
                ],
            )
        )
        impressions.append(f"{pe['size'].capitalize()} {_where(pe['side'])} pleural effusion.")
    else:
        sentences.append(
            _pick(
                rng,
                [
                    "No pleural effusion was detected.",
                    "Pleural effusion-thickening was not detected.",
                    "There is no pleural effusion.",
                ],
            )
        )
    sentences.append(
        _pick(
            rng,
            [
                "Upper abdominal organs included in the sections are normal as far as can be seen.",
                "No pathology was detected in the upper abdominal sections within the scan area.",
                "Liver and spleen in the scanned sections are unremarkable.",
            ],
        )
    )
    sentences.append(
        _pick(
            rng,
            [
                "No lytic or destructive lesion was detected in the bones within the scan area.",
                "Degenerative changes are seen in the thoracic vertebrae.",
                "Bone structures are natural.",
            ],
        )
    )
    return sentences, impressions


def write_report(f: Findings, rng: np.random.Generator) -> tuple[str, str]:
    """(Findings_EN, Impressions_EN) for one scan."""
    sentences, impressions = _sentences(f, rng)
    if not impressions:
        impressions = [
            _pick(
                rng,
                [
                    "No significant pathology was detected in the thorax.",
                    "Normal chest CT.",
                    "Thorax CT within normal limits.",
                ],
            )
        ]
    return " ".join(sentences), " ".join(impressions)
