import { expect } from "vitest";
import { DmError } from "../../daemon/core/errors.js";

/** What a promise rejected with (undefined when it resolved). */
export function caught(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => undefined,
    (e: unknown) => e,
  );
}

/** The promise fails with a DmError of this errno (and, if given, a message containing/matching `text`). */
export async function expectDmError(p: Promise<unknown>, errno: string, text?: string | RegExp): Promise<DmError> {
  const err = await caught(p);
  expect(err).toBeInstanceOf(DmError);
  expect((err as DmError).errno).toBe(errno);
  if (typeof text === "string") expect((err as DmError).message).toContain(text);
  else if (text) expect((err as DmError).message).toMatch(text);
  return err as DmError;
}
