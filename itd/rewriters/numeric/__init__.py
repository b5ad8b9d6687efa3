"""GSM8K numeric re-instantiation: new numbers in the question, the worked solution recomputed exactly.

No model is involved. For one GSM8K item the rewriter

1. reads the solution's calculator chain: the `<<expr=result>>` annotations, plain equations the solution left
   unannotated ("99 + 5 = $104", "2(60) = 120") and trivial annotations whose computation is in the prose
   ("9 - 3 = <<6=6>>6");
2. explains every number the chain uses: an *input* stated in the question (digits, "$1,200", "2.50", "20%", a
   number word such as "three"), a form derived from one (20% used as .2, .8 or 1.2; "1.25 hours" as 75
   minutes; "45 cents" as 0.45), the result of an earlier step, or a *constant* ("twice", "half", "a dozen", a
   fraction "3/4", 60 minutes, 100 percent, 7 days). A number it cannot explain makes the item not rewritable;
3. resolves numbers with two readings: an input equal to an earlier result is tied to it (drawn equal, or solved
   for), and with `partial` an input whose reading stays ambiguous (an input equal to a constant of the
   question, an input a result may have been worked out from in the head) keeps its value;
4. draws new values for the other inputs (same kind: integers stay integers, cents stay cents, percentages stay
   below 100, words stay words; by default the same digit count and decimal places, near the old value and
   leaning down just enough that a set's magnitudes do not drift up), deterministic in seed, item id and attempt,
   and recomputes every step with exact fractions, searching until each result keeps its kind (integer, sign, a
   short decimal, order of magnitude, and the order of results when the solution compares them), the final
   answer changes, and every operation keeps what makes it hard (`itd.rewriters.difficulty`: digit counts of
   operands and results, exact divisions, carries and borrows, decimal places), giving these up one at a time
   in a stated order only where no values hold them (`search.LEVELS`; `info["difficulty"]` says what held);
5. writes the new values into the question, the annotations, the prose that restates them and the `#### N`
   line, formatted like the original (thousands commas, `$`, cents, number words, "a"/"an"), and annotates the
   prose equations it recomputed;
6. re-executes the new solution (`itd.rewriters.chain.check_chain`) and re-reads the new question (every input
   carries its new value, every other number is unchanged) before emitting the candidate.

Items it cannot handle raise `NotRewritable` with a reason of the form "category: detail", for example
"unexplained number: 40 in step 1" or "non-integer intermediate: no values in 2000 draws (...)".

The package: `words` (reading and writing numbers), `plan` (the analysis and the exact recomputation),
`search` (drawing values that keep the difficulty, and the text edits) and `rewriter` (`NumericRewriter`).
"""

from itd.rewriters.numeric.rewriter import NumericConfig, NumericRewriter
from itd.rewriters.numeric.words import GENERIC_CONSTANTS, number_words

__all__ = ["NumericRewriter", "NumericConfig", "GENERIC_CONSTANTS", "number_words"]
