"""A deterministic generator of realistic, legal-sounding English documents for benchmarks.

Sentences come from templates filled with names, courts, statutes and amounts drawn from a seeded
``random.Random``, so the same seed always gives the same corpus (byte for byte) and no two
documents are identical (the ingest would skip exact duplicates).
"""

from __future__ import annotations

import random
from pathlib import Path

SURNAMES = ["Abernathy", "Baptiste", "Castellano", "Delacroix", "Ellison", "Fairbanks", "Galloway", "Hargrove",
            "Iverson", "Jaramillo", "Kowalski", "Lindgren", "Montague", "Nakamura", "Okafor", "Pemberton",
            "Quintero", "Rasmussen", "Sorensen", "Thibodeaux", "Underwood", "Valdivia", "Whitcombe", "Yarborough"]
COMPANIES = ["Harbor Freight Lines", "Ridgeline Holdings", "Summit Mutual Insurance", "Lakeshore Property Group",
             "Northgate Medical Systems", "Bright Horizon Outfitters", "Granite Peak Builders", "Orion Appliance Co.",
             "Keystone Casualty", "Atlas Grain Elevators", "Pinecrest Dental Group", "Trident Parking Structures"]
COURTS = ["the Court of Appeals", "the Superior Court", "the District Court", "the Supreme Court of the State",
          "the trial court", "the appellate division", "the probate court", "the bankruptcy court"]
STATUTES = ["Civil Code section {n}", "Labor Code section {n}", "Penal Code section {n}",
            "the Consumer Protection Act, section {n}", "Rule {n} of the Rules of Civil Procedure",
            "the Residential Tenancies Act, section {n}", "Business and Professions Code section {n}"]
DOCTRINES = ["the implied warranty of habitability", "promissory estoppel", "the economic loss rule",
             "res judicata", "the parol evidence rule", "comparative negligence", "the statute of frauds",
             "unjust enrichment", "the business judgment rule", "qualified immunity", "the discovery rule",
             "equitable tolling", "respondeat superior", "the covenant of good faith and fair dealing"]
THINGS = ["the security deposit", "the lease agreement", "the purchase order", "the insurance policy",
          "the employment contract", "the easement", "the warranty", "the settlement agreement",
          "the promissory note", "the non-compete clause", "the arbitration clause", "the invoice"]
ACTIONS = ["breached", "repudiated", "failed to perform", "waived", "ratified", "rescinded", "modified",
           "terminated", "assigned", "disputed"]
OUTCOMES = ["affirmed", "reversed", "reversed in part and remanded", "vacated", "modified and affirmed"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

TEMPLATES = [
    "{party} argues that {thing} was {action} when {other} did not give written notice within {days} days.",
    "Under {statute}, a party seeking relief must show that {doctrine} applies to the facts as found.",
    "{court} held that {doctrine} did not bar the claim because the injury was not discovered until {month} {year}.",
    "The record shows that {other} paid ${amount} under {thing} and later demanded its return.",
    "We review questions of statutory interpretation de novo, but we defer to the findings of {court}.",
    "{party} contends that {court} erred in admitting testimony about {thing}.",
    "Because {other} {action} {thing}, the remaining obligations of {party} were discharged.",
    "The jury awarded ${amount} in compensatory damages and declined to award punitive damages.",
    "Nothing in {statute} suggests that the legislature intended to displace {doctrine}.",
    "On {month} {day}, {year}, {other} sent a letter stating that {thing} would not be renewed.",
    "The parties stipulated that {thing} was executed in {year} and recorded with the county clerk.",
    "{party} relies on {doctrine}, but that doctrine requires reasonable and detrimental reliance.",
    "A landlord who withholds {thing} in bad faith may be liable for up to twice its amount under {statute}.",
    "The dissent would have {outcome} the judgment on the ground that the notice was defective.",
    "We agree with {court} that the limitation period began to run no later than {month} {year}.",
    "The burden then shifts to {other} to articulate a legitimate, non-pretextual reason for its decision.",
    "Evidence that {other} knew of the defect before the sale is sufficient to support the verdict.",
    "The judgment of {court} is {outcome}, and each party shall bear its own costs on appeal.",
    "{party} did not raise {doctrine} below, and the argument is therefore forfeited.",
    "To prevail, {party} had to prove that {other} {action} {thing} and that damages of at least ${amount} followed.",
]
HEADINGS = ["Background", "Procedural History", "Standard of Review", "Discussion", "Analysis", "Damages",
            "Notice", "Limitations", "Disposition", "Conclusion"]


def _fill(rng: random.Random, template: str, party: str, other: str) -> str:
    return template.format(
        party=party, other=other, thing=rng.choice(THINGS), action=rng.choice(ACTIONS),
        doctrine=rng.choice(DOCTRINES), court=rng.choice(COURTS),
        statute=rng.choice(STATUTES).format(n=rng.randint(100, 2999)), outcome=rng.choice(OUTCOMES),
        month=rng.choice(MONTHS), day=rng.randint(1, 28), year=rng.randint(1998, 2024),
        days=rng.choice([10, 14, 21, 30, 45, 60, 90]), amount=f"{rng.randint(1, 900) * 250:,}")


def make_document(index: int, chars: int = 3000, seed: int = 0) -> tuple[str, str]:
    """(file name, markdown text) of about ``chars`` characters for document ``index``."""
    rng = random.Random(seed * 1_000_003 + index)
    party = f"{rng.choice(SURNAMES)}"
    other = rng.choice(COMPANIES + SURNAMES)
    title = f"{party} v. {other} ({rng.randint(1999, 2024)}) No. {index:05d}"
    parts = [f"# {title}", ""]
    length = len(title)
    headings = iter(rng.sample(HEADINGS, len(HEADINGS)))
    while length < chars:
        heading = next(headings, None) or f"Part {rng.randint(2, 9)}"
        parts += [f"## {heading}", ""]
        paragraph = " ".join(_fill(rng, rng.choice(TEMPLATES), party, other) for _ in range(rng.randint(3, 6)))
        parts += [paragraph, ""]
        length += len(heading) + len(paragraph) + 6
    slug = f"{index:05d}-{party.lower()}-v-{other.lower().replace(' ', '-').replace('.', '')}.md"
    return slug, "\n".join(parts)


def write_corpus(folder: Path, n: int, chars: int = 3000, seed: int = 0) -> int:
    """Write ``n`` documents as .md files into ``folder``; returns the total characters written."""
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(n):
        name, text = make_document(i, chars, seed)
        (folder / name).write_text(text, encoding="utf-8")
        total += len(text)
    return total
