/**
 * Per-room dedupe by seq (protocol §12.2 step 4, §13.3). Seqs are gap-free
 * per room, so one number (the highest processed seq) is the whole state:
 * a seq at or below it is a duplicate (replay after reconnect, own echo), the
 * next one is processed, anything beyond is a gap that a re-join fills.
 */
export type Verdict = "duplicate" | "next" | "gap";

export function classify(lastSeq: number | undefined, seq: number): Verdict {
  // No lastSeq: the room was joined without since_seq and nothing is held,
  // so whatever comes first is accepted (pseudo-code of §12.2).
  if (lastSeq === undefined) return "next";
  if (seq <= lastSeq) return "duplicate";
  if (seq === lastSeq + 1) return "next";
  return "gap";
}
